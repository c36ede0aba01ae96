"""How numbers read in figures, pages and summaries: three significant digits, one rule everywhere.

:func:`fmt` serves Python (titles, legends, widget labels, summaries); :data:`JS_FORMAT` is the
same rule in JavaScript for Bokeh's hover tools and axis ticks. Needs nothing beyond Python.
"""

from __future__ import annotations

import math

DIGITS = 3


def fmt(value) -> str:
    """``value`` to three significant digits: ``0.00749894`` -> ``0.0075``, ``3.16228e-05`` -> ``3.16e-05``.

    Integers below 10**3 read as integers (``6.0`` -> ``6``); NaN reads ``nan``; anything
    that is not a number is returned as its ``str``.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return str(number)
    return f"{number:.{DIGITS}g}"


# The body of a Bokeh CustomJS formatter (``value`` in, a string out): Python's "%.3g", in JavaScript.
JS_FORMAT = f"""
const x = Number(value);
if (!isFinite(x)) return String(value);
if (x === 0) return "0";
const exponent = Math.floor(Math.log10(Math.abs(Number(x.toPrecision({DIGITS})))));
if (exponent < -4 || exponent >= {DIGITS}) {{
  const [m, e] = x.toExponential({DIGITS - 1}).split("e");
  const mantissa = m.includes(".") ? m.replace(/0+$/, "").replace(/\\.$/, "") : m;
  const sign = e[0] === "-" ? "-" : "+";
  const digits = e.replace(/^[-+]/, "");
  return mantissa + "e" + sign + (digits.length < 2 ? "0" + digits : digits);
}}
const fixed = x.toFixed(Math.max(0, {DIGITS} - 1 - exponent));
return fixed.includes(".") ? fixed.replace(/0+$/, "").replace(/\\.$/, "") : fixed;
"""
