"""The embedded sweep presets: one TOML file per setup of the study, read by :mod:`lrscan.spec`."""
