"""The architecture a search-space model has: typed, with the JSON form checkpoints keep.

``ArchSpec`` is what a NAS method's global model is built from: per cell type the masks
soft or hard pruning left (``CellMasks``: edges x ops, and the input combinations of
eq. 8 flattened over the nodes), how a node combines its inputs ("combinations": eq. 8's
relaxation over k-combinations; "sum": DARTS's plain sum over live edges), the genotype
once one is derived, and the log of what pruning removed.

The dict form (``to_dict``/``from_dict``) is the one checkpoints store as JSON (the
``spec`` attribute) and ``genotype.json`` holds: ``to_dict`` writes the keys in the
order the methods always wrote them, so files stay byte-identical, and ``from_dict``
reads every spec written so far (older shapes upgraded by ``migrations.stored_spec``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..migrations import stored_spec

CELL_TYPES = ("normal", "reduce")


@dataclass(frozen=True)
class CellMasks:
    """What pruning kept of one cell type: ``ops[e][k]`` op k of edge e, ``combos[c]``
    combination c of all nodes' input combinations (node by node)."""

    ops: list[list[bool]]
    combos: list[bool]

    def to_dict(self) -> dict:
        return {"ops": self.ops, "combos": self.combos}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CellMasks:
        return cls([[bool(v) for v in row] for row in d["ops"]], [bool(v) for v in d["combos"]])

    @classmethod
    def of(cls, masks: CellMasks | Mapping[str, Any]) -> CellMasks:
        return masks if isinstance(masks, CellMasks) else cls.from_dict(masks)


@dataclass(frozen=True)
class EdgeChoice:
    """One input of a derived node: ``op`` applied to state ``input``, and the op's
    probability softmax(log alpha) over its edge when the derivation reports it; with
    the clients' dispersion (``prune_rule: z``) also ``margin_z``, the op's logit gap
    over the edge's runner-up in standard errors, and ``undecided``, whether that gap
    lies inside the noise. A derivation by perturbation (``nas.perturbation``) writes
    ``perturbation``: the accuracy ``drop`` and ``loss_rise`` when the op is removed
    from the supernet's mixture, the ``runner_up`` op and its ``runner_up_drop`` (and,
    for DARTS's sum, ``input_drop``: the drop when the whole edge is removed)."""

    op: str
    input: int
    p_op: float | None = None
    margin_z: float | None = None
    undecided: bool | None = None
    perturbation: dict | None = None

    def to_dict(self) -> dict:
        d: dict = {"op": self.op, "input": self.input}
        if self.p_op is not None:
            d["p_op"] = self.p_op
        return _with_perturbation(_with_margin(d, self.margin_z, self.undecided), self.perturbation)


@dataclass(frozen=True)
class NodeGenotype:
    """A derived node: the edges it sums, and the probability of their combination
    (softmax(beta) over the node's combinations) where the derivation chose one; the
    combination's ``margin_z`` and ``undecided`` as ``EdgeChoice``'s; ``perturbation``
    the decision on its inputs when a derivation by perturbation scored them."""

    inputs: list[EdgeChoice]
    p_combo: float | None = None
    margin_z: float | None = None
    undecided: bool | None = None
    perturbation: dict | None = None

    def to_dict(self) -> dict:
        d: dict = {"inputs": [x.to_dict() for x in self.inputs]}
        if self.p_combo is not None:
            d["p_combo"] = self.p_combo
        return _with_perturbation(_with_margin(d, self.margin_z, self.undecided), self.perturbation)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeGenotype:
        return cls(
            [
                EdgeChoice(
                    x["op"],
                    int(x["input"]),
                    x.get("p_op"),
                    x.get("margin_z"),
                    x.get("undecided"),
                    x.get("perturbation"),
                )
                for x in d["inputs"]
            ],
            d.get("p_combo"),
            d.get("margin_z"),
            d.get("undecided"),
            d.get("perturbation"),
        )


def _with_margin(d: dict, margin_z: float | None, undecided: bool | None) -> dict:
    """``d`` with the margin keys where the derivation measured them (additive: files
    without them read as before, and derivations without them write what they did)."""
    if undecided is not None:
        d["margin_z"] = margin_z
        d["undecided"] = undecided
    return d


def _with_perturbation(d: dict, perturbation: dict | None) -> dict:
    """``d`` with a derivation by perturbation's log of the choice (additive, as the
    margins)."""
    if perturbation is not None:
        d["perturbation"] = dict(perturbation)
    return d


@dataclass(frozen=True)
class CellGenotype:
    """A derived cell: its nodes (states 2, 3, ...) and the states it concatenates."""

    nodes: list[NodeGenotype]
    concat: list[int]

    def to_dict(self) -> dict:
        return {"nodes": [n.to_dict() for n in self.nodes], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CellGenotype:
        return cls([NodeGenotype.from_dict(n) for n in d["nodes"]], [int(i) for i in d["concat"]])


@dataclass(frozen=True)
class Genotype:
    """The derived architecture: one ``CellGenotype`` per cell type."""

    cells: dict[str, CellGenotype]

    @property
    def text(self) -> str:
        """Compact text: per cell type, per node its op(input) terms."""
        lines = []
        for c in CELL_TYPES:
            if c not in self.cells:
                continue
            nodes = [
                " + ".join(f"{x.op}(s{x.input})" for x in n.inputs) for n in self.cells[c].nodes
            ]
            lines.append(f"{c}: " + "; ".join(f"s{j + 2} = {n}" for j, n in enumerate(nodes)))
        return "\n".join(lines)

    @property
    def undecided(self) -> list[str]:
        """The choices the derivation flagged as inside the noise, one line each:
        ``normal s3 <- s0: sep_conv_3x3 (margin 1.2 se)`` for an edge's op,
        ``normal s3: inputs s0, s2 (margin 0.4 se)`` for a node's combination."""

        def why(m: float | None) -> str:
            return "(no measurable dispersion)" if m is None else f"(margin {m:g} se)"

        out = []
        for c in CELL_TYPES:
            for j, n in enumerate(self.cells.get(c, CellGenotype([], [])).nodes):
                if n.undecided:
                    ins = ", ".join(f"s{x.input}" for x in n.inputs)
                    out.append(f"{c} s{j + 2}: inputs {ins} {why(n.margin_z)}")
                out += [
                    f"{c} s{j + 2} <- s{x.input}: {x.op} {why(x.margin_z)}"
                    for x in n.inputs
                    if x.undecided
                ]
        return out

    @property
    def by_perturbation(self) -> list[str]:
        """The choices a derivation by perturbation made, one line each with its accuracy
        drop and the runner-up's, in points: ``normal s3 <- s0: sep_conv_3x3 drop 4.1
        (runner-up skip_connect 1.2)``; a node's inputs as ``normal s3: inputs s0, s2
        drop 2 (runner-up s1, s2 0.5)``. Empty for a derivation by the logits."""

        def pts(d: float | None) -> str:
            return "-" if d is None else f"{100 * d:.3g}"

        def rival(p: dict) -> str:
            r = p.get("runner_up")
            name = ", ".join(r) if isinstance(r, list) else (r or "none")
            return f"(runner-up {name} {pts(p.get('runner_up_drop'))})"

        out = []
        for c in CELL_TYPES:
            for j, n in enumerate(self.cells.get(c, CellGenotype([], [])).nodes):
                if n.perturbation and "drop" in n.perturbation:
                    ins = ", ".join(f"s{x.input}" for x in n.inputs)
                    out.append(
                        f"{c} s{j + 2}: inputs {ins} drop {pts(n.perturbation['drop'])} "
                        f"{rival(n.perturbation)}"
                    )
                out += [
                    f"{c} s{j + 2} <- s{x.input}: {x.op} drop {pts(x.perturbation['drop'])} "
                    f"{rival(x.perturbation)}"
                    for x in n.inputs
                    if x.perturbation
                ]
        return out

    def to_dict(self) -> dict:
        """``{"normal": cell, "reduce": cell, "text": ...}`` (genotype.json's form)."""
        return {**{c: g.to_dict() for c, g in self.cells.items()}, "text": self.text}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Genotype:
        return cls({c: CellGenotype.from_dict(d[c]) for c in CELL_TYPES if c in d})


@dataclass(frozen=True)
class ArchSpec:
    """The spec of a search-space model (see the module docstring)."""

    masks: dict[str, CellMasks]
    inputs: str = "combinations"
    genotype: Genotype | None = None
    prune_log: list[dict] = field(default_factory=list)

    def derived(self, masks: dict[str, CellMasks], genotype: Genotype) -> ArchSpec:
        """This spec with a derivation's masks and genotype."""
        return replace(self, masks=masks, genotype=genotype)

    def to_dict(self) -> dict:
        d: dict = {
            "masks": {c: m.to_dict() for c, m in self.masks.items()},
            "inputs": self.inputs,
            "genotype": None if self.genotype is None else self.genotype.to_dict(),
        }
        if self.prune_log:
            d["prune_log"] = list(self.prune_log)
        return d

    def to_json(self) -> str:
        """The canonical JSON (sorted keys), as checkpoints store it."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArchSpec:
        d = stored_spec(d)
        g = d.get("genotype")
        return cls(
            {c: CellMasks.from_dict(d["masks"][c]) for c in CELL_TYPES},
            d["inputs"],
            Genotype.from_dict(g) if g else None,
            list(d.get("prune_log", [])),
        )

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def of(cls, spec: ArchSpec | Mapping[str, Any]) -> ArchSpec:
        """``spec`` itself, or the spec its dict form describes."""
        return spec if isinstance(spec, ArchSpec) else cls.from_dict(spec)


def genotype_of(spec: Mapping[str, Any] | None) -> Genotype | None:
    """The genotype of a stored spec (a checkpoint's, a ``genotype.json``'s parent), or None
    when there is none yet or the spec is not a search-space spec (fixed models: ``{}``)."""
    if not isinstance(spec, Mapping):
        return None
    g = spec.get("genotype")
    return Genotype.from_dict(g) if isinstance(g, Mapping) and g else None


def genotype_str(genotype: Mapping[str, Any]) -> str:
    """``Genotype.text`` of a genotype's dict form (cell types it lacks are left out)."""
    return Genotype.from_dict(genotype).text
