"""Run every ported case through our engine and both prototypes; print a markdown table
(kept: every fact the test demands is named) and each prototype's messages where it does
not keep a case. ``PYTHONPATH=src:tools/proto_config python tools/proto_config/compare.py``"""

from __future__ import annotations

import proto_omegaconf
import proto_pydantic
from cases import CASES, keeps

from fednas_mpi import config as C


def ours(raw, overrides=()) -> list[str]:
    try:
        C.from_dict(raw, overrides)
    except C.ConfigError as e:
        return e.problems
    return []


ENGINES = {"ours": ours, "pydantic": proto_pydantic.problems, "omegaconf": proto_omegaconf.problems}

if __name__ == "__main__":
    print("| case | ported from | " + " | ".join(ENGINES) + " |")
    print("|---|---|" + "---|" * len(ENGINES))
    failing: dict[str, list[str]] = {name: [] for name in ENGINES}
    for case, test, raw, overrides, facts in CASES:
        cells = []
        for name, engine in ENGINES.items():
            msgs = engine(raw, overrides)
            ok = keeps(msgs, facts)
            cells.append("kept" if ok else "**lost**")
            if not ok:
                shown = "; ".join(m.splitlines()[0] for m in msgs) or "(no error)"
                failing[name].append(f"- `{case}` (needs {facts}): {shown}")
        print(f"| {case} | {test} | " + " | ".join(cells) + " |")
    for name, lines in failing.items():
        print(f"\n### {name}: {len(lines)} case(s) lost\n")
        print("\n".join(lines) if lines else "(none)")
