"""`infinity-jax schedules [--pn 1M] [--h-div-w R]`: print official schedules and token counts."""

from __future__ import annotations

import argparse
import math

from infinity_jax import schedules
from infinity_jax.errors import UsageError


def _h_div_w(text: str) -> float:
    """--h-div-w: a positive finite height / width; the nearest official template is printed."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):  # nan fails every comparison: it lands here too
        lo, hi = schedules.H_DIV_W_TEMPLATES[0], schedules.H_DIV_W_TEMPLATES[-1]
        raise UsageError(
            f"--h-div-w {text!r}: expected a positive finite aspect ratio (height / width); "
            f"the templates span {lo} to {hi} and the nearest one is printed"
        )
    return value


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infinity-jax schedules", description=__doc__)
    ap.add_argument("--pn", default=None, choices=sorted(schedules.PIXEL_BUDGETS))
    ap.add_argument("--h-div-w", default=None, help="print only the template nearest this h/w (a positive number)")
    a = ap.parse_args(argv)
    # checked here, not as an argparse type: a bad value is one line (commands.main), and 0 is not "no value"
    ratios = schedules.H_DIV_W_TEMPLATES if a.h_div_w is None else [schedules.nearest_h_div_w(_h_div_w(a.h_div_w))]
    pns = [a.pn] if a.pn else list(schedules.PIXEL_BUDGETS)
    print(f"{'h/w':>6} {'pn':>6} {'image HxW':>11} {'scales':>6} {'tokens':>7}  last scales")
    for r in ratios:
        for pn in pns:
            s = schedules.official_schedule(r, pn)
            H, W = schedules.image_size(s)
            print(
                f"{r:>6.3f} {pn:>6} {f'{H}x{W}':>11} {len(s):>6} {schedules.num_tokens(s):>7}  "
                f"{[hw[1:] for hw in s[-3:]]}"
            )
    return 0
