"""Projected hours of the paper's protocol (Table 2: 1000 rounds, 5 of 100 clients a round,
5 local epochs of 600 images) on one node with 8 GPUs, from a short measurement (issue 28).

    python bench/project_paper.py --updates updates.json [--runs runs.json]
                                  [--supernet supernet.json] [--json OUT]

The model, pure arithmetic (``project``): a round's compute is one wave of client updates
(5 clients on 8 GPUs run at once: ceil(5 / 8) = 1 wave), each update costing
``steps x step(d)`` where ``steps`` is the update's measured time over the measured step at
0 % dead ops (step-equivalents of the method's loop: MAML's inner and query steps, MiLeNAS's
two passes) and ``step(d)`` the step of the network the round trains:

- FedMetaNAS: warm-up rounds at 0 % dead; the search rounds after it in three equal parts at
  0, 50 and 90 % dead (soft pruning removes ops progressively; the real trajectory is not
  known before a run, the thirds bracket it); the rounds after ``final_round`` at the
  derived network's step, with the same loop.
- FedNAS: the search at 0 % dead (no pruning before its derivation); the retraining at the
  derived step with plain SGD, local_epochs x ceil(images / batch) steps.

Each round adds the measured non-compute overhead (communication, aggregation,
checkpoint); evaluation adds one subset evaluation every ``eval_every`` rounds and a
whole-set one in the last round and the derivation round. Printed beside Table 2.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

TABLE2_HOURS = {"fedmetanas": 7.12, "fednas": 19.47}
DEAD = (0.0, 0.5, 0.9)


@dataclass(frozen=True)
class Protocol:
    """The paper's federation (section 5.1) on one node."""

    rounds: int = 1000
    clients_per_round: int = 5
    gpus: int = 8
    local_epochs: int = 5
    images: int = 600
    batch: int = 64
    eval_every: int = 10

    @property
    def waves(self) -> int:
        """Client updates one after the other on a GPU in a round."""
        return math.ceil(self.clients_per_round / self.gpus)


@dataclass(frozen=True)
class Stage:
    name: str
    rounds: float  # fractional where the search is cut in thirds
    step: str  # a key of the step times: "0.0", "0.5", "0.9" (dead ops) or "derived"
    steps_per_update: float


def stages(method: str, p: Protocol, schedule: dict, steps: dict) -> list[Stage]:
    """The rounds of ``method``'s run, by what they train. ``schedule``: FedMetaNAS
    ``warmup``, ``final`` (its resolved arch_warmup_rounds and final_round); FedNAS
    ``search``. ``steps``: step-equivalents of one client update, ``search`` (measured)
    and, for FedMetaNAS, ``derived`` (the same loop by default)."""
    if method == "fedmetanas":
        w, f = schedule["warmup"], schedule["final"]
        k, kd = steps["search"], steps.get("derived", steps["search"])
        third = (f - w) / 3
        return [
            Stage("warmup", w, "0.0", k),
            *(Stage(f"search {d:.0%} dead", third, str(d), k) for d in DEAD),
            Stage("derived", p.rounds - f, "derived", kd),
        ]
    if method == "fednas":
        s = schedule["search"]
        retrain = p.local_epochs * math.ceil(p.images / p.batch)
        return [
            Stage("search", s, "0.0", steps["search"]),
            Stage("retrain", p.rounds - s, "derived", steps.get("derived", retrain)),
        ]
    raise ValueError(f"no projection for {method!r}")


def evaluations(p: Protocol, derives_at: int | None) -> tuple[int, int]:
    """(subset, whole-set) evaluations: every eval_every-th round reads the subset except
    the last round and the derivation round, which read the whole test set."""
    full = {p.rounds} | ({derives_at} if derives_at else set())
    subset = sum(1 for r in range(p.eval_every, p.rounds + 1, p.eval_every) if r not in full)
    return subset, len(full)


def project(
    stage_list: list[Stage],
    step_s: dict[str, float],
    p: Protocol,
    eval_s: float = 0.0,
    full_eval_s: float = 0.0,
    overhead_s: float = 0.0,
    derives_at: int | None = None,
) -> dict:
    """Seconds per stage, of evaluation and in total, and the total in hours."""
    per_stage = {
        s.name: s.rounds * (p.waves * s.steps_per_update * step_s[s.step] + overhead_s)
        for s in stage_list
    }
    subset, full = evaluations(p, derives_at)
    ev = subset * eval_s + full * full_eval_s
    total = sum(per_stage.values()) + ev
    return {"stages_s": per_stage, "eval_s": ev, "total_s": total, "hours": total / 3600}


# ------------------------------------------------------------------ measured inputs


def steps_per_update(m: dict, p: Protocol) -> dict[str, float]:
    """Step-equivalents of a client update of the protocol: the measured update's time
    over the step at 0 % dead, scaled by minibatches per update (local epochs x batches of
    its images) where it was measured on fewer (a dry run)."""
    batches = p.local_epochs * math.ceil(p.images / p.batch)
    measured = m["local_epochs"] * math.ceil(m["images"] / m["batch"])
    return {"search": m["update_s"] / m["step_s"]["0.0"] * batches / measured}


def _supernet_steps(supernet: dict, method: str) -> dict[str, dict[str, float]]:
    """{path: {dead key: seconds}} of bench/supernet.py's rows for ``method``'s config (its
    JSON; a path is any row entry holding a median_ms)."""
    out: dict[str, dict[str, float]] = {}
    for row in supernet.get("steps", []):
        if Path(str(row.get("config", ""))).stem.split("-")[0] != method:
            continue
        dead = row.get("dead")
        key = "derived" if dead == "derived" else min(DEAD, key=lambda d: abs(d - float(dead)))
        for path, v in row.items():
            if isinstance(v, dict) and "median_ms" in v:
                out.setdefault(path, {})[str(key)] = v["median_ms"] / 1e3
    return {p: s for p, s in out.items() if set(s) >= {"0.0", "0.5", "0.9", "derived"}}


def projections(updates: dict, runs: dict, supernet: dict, p: Protocol) -> list[dict]:
    """One row per method and step source: the client-update script's own steps (the path
    the runs use), then each path bench/supernet.py timed."""
    rows = []
    for method, m in updates.get("methods", {}).items():
        r = runs.get(method, {})
        sched = m["schedule"]
        derives_at = sched.get("final") or sched.get("search")
        kw = dict(
            eval_s=r.get("eval_subset_s", 0.0),
            full_eval_s=r.get("eval_full_s", 0.0),
            overhead_s=r.get("overhead_s", 0.0),
            derives_at=derives_at,
        )
        steps = steps_per_update(m, p)
        sources = {f"{m.get('path', 'auto')} (client-update run)": m["step_s"]}
        sources.update(
            {f"{k} (supernet.py)": v for k, v in _supernet_steps(supernet, method).items()}
        )
        for source, step_s in sources.items():
            res = project(stages(method, p, sched, steps), step_s, p, **kw)
            rows.append({"method": method, "steps_from": source, **res})
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "| method | step times from | projected h | Table 2 h | ratio | compute by stage h "
        "| eval h |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        paper = TABLE2_HOURS.get(r["method"], float("nan"))
        by_stage = ", ".join(f"{k} {v / 3600:.2f}" for k, v in r["stages_s"].items())
        print(
            f"| {r['method']} | {r['steps_from']} | {r['hours']:.2f} | {paper:.2f} | "
            f"{r['hours'] / paper:.2f} | {by_stage} | {r['eval_s'] / 3600:.2f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=Path, required=True, help="bench/paper_updates.py JSON")
    ap.add_argument("--runs", type=Path, help="bench/paper_updates.py stages JSON")
    ap.add_argument("--supernet", type=Path, help="bench/supernet.py --json output")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    def read(path):
        return json.loads(path.read_text()) if path and path.is_file() else {}

    p = Protocol()
    rows = projections(read(a.updates), read(a.runs), read(a.supernet), p)
    print(
        f"Projected: {p.rounds} rounds, {p.clients_per_round} clients a round on {p.gpus} "
        f"GPUs, {p.local_epochs} local epochs of {p.images} images (batch {p.batch}), "
        f"evaluation every {p.eval_every} rounds"
    )
    print_table(rows)
    if a.json:
        a.json.write_text(json.dumps({"protocol": asdict(p), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
