"""What the figure writers, the explorer and their commands share without importing each
other: the explorer's default port and the image formats `lrscan plot` writes."""

DEFAULT_PORT = 5006
# The image formats `lrscan plot --format` writes besides the HTML (matplotlib infers each from the file's suffix).
IMAGE_FORMATS = ("png", "svg", "pdf")
