"""`infinity-jax schedules [--pn 1M] [--h-div-w R]`: print official schedules and token counts."""
from __future__ import annotations

import argparse

from infinity_jax import schedules


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="infinity-jax schedules", description=__doc__)
    ap.add_argument("--pn", default=None, choices=sorted(schedules.PIXEL_BUDGETS))
    ap.add_argument("--h-div-w", type=float, default=None, help="print only the template nearest this h/w")
    a = ap.parse_args(argv)
    ratios = [schedules.nearest_h_div_w(a.h_div_w)] if a.h_div_w else schedules.H_DIV_W_TEMPLATES
    pns = [a.pn] if a.pn else list(schedules.PIXEL_BUDGETS)
    print(f"{'h/w':>6} {'pn':>6} {'image HxW':>11} {'scales':>6} {'tokens':>7}  last scales")
    for r in ratios:
        for pn in pns:
            s = schedules.official_schedule(r, pn)
            H, W = schedules.image_size(s)
            print(f"{r:>6.3f} {pn:>6} {f'{H}x{W}':>11} {len(s):>6} {schedules.num_tokens(s):>7}  "
                  f"{[hw[1:] for hw in s[-3:]]}")
    return 0
