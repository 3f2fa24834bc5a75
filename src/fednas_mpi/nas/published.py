"""Published DARTS-space cells, and reading a genotype from wherever a user keeps one.

A searched cell is judged the way NAS research judges one (DARTS's evaluation phase;
Yang et al. 2020, "NAS evaluation is frustratingly hard"): retrained from scratch with a
fixed recipe beside many random cells and known published cells of the same space. The
published cells below are facts of the papers that found them (CIFAR-10 searches, 4
intermediate nodes of 2 inputs each, the 8 DARTS primitives), written as each paper
lists them - per node two (op, input state) pairs, states 0 and 1 the cell inputs, every
intermediate node concatenated - and turned into our genotype form by ``darts_cell``.

``load_genotype`` takes a genotype from a published name, a JSON file (a
``genotype.json``, a checkpoint's spec, or the bare ``{"normal": .., "reduce": ..}``
form) or a run directory (its ``genotype.json``); ``genotype_spec`` checks that it fits a
space and returns the spec of its discrete network (the one a search derives and
``random_nas`` trains), or raises ``GenotypeError`` naming what does not fit;
``source_spec`` does both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .space import CellSpace
from .spec import CELL_TYPES, ArchSpec, CellMasks, Genotype


class GenotypeError(ValueError):
    """A genotype that cannot be read, or that does not fit the network it is to build."""


@dataclass(frozen=True)
class PublishedCell:
    """A cell as its paper publishes it: per cell type, per node two (op, input) pairs."""

    name: str
    source: str
    normal: tuple[tuple[str, int], ...]
    reduce: tuple[tuple[str, int], ...]


#: The published cells by name. Each is the genotype its paper's code release lists
#: (the CIFAR-10 search), the source named beside it.
PUBLISHED: dict[str, PublishedCell] = {
    c.name: c
    for c in (
        PublishedCell(
            "darts_v1",
            "Liu, Simonyan and Yang 2019, DARTS: Differentiable Architecture Search (ICLR), "
            "first-order search on CIFAR-10; genotypes.py of github.com/quark0/darts (DARTS_V1)",
            (
                ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 0),
                ("skip_connect", 0),
                ("sep_conv_3x3", 1),
                ("skip_connect", 0),
                ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 0),
                ("skip_connect", 2),
            ),
            (
                ("max_pool_3x3", 0),
                ("max_pool_3x3", 1),
                ("skip_connect", 2),
                ("max_pool_3x3", 0),
                ("max_pool_3x3", 0),
                ("skip_connect", 2),
                ("skip_connect", 2),
                ("avg_pool_3x3", 0),
            ),
        ),  # fmt: skip
        PublishedCell(
            "darts_v2",
            "Liu, Simonyan and Yang 2019, DARTS: Differentiable Architecture Search (ICLR), "
            "second-order search on CIFAR-10 (the paper's Figures 4-5); genotypes.py of "
            "github.com/quark0/darts (DARTS_V2)",
            (
                ("sep_conv_3x3", 0),
                ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 0),
                ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1),
                ("skip_connect", 0),
                ("skip_connect", 0),
                ("dil_conv_3x3", 2),
            ),
            (
                ("max_pool_3x3", 0),
                ("max_pool_3x3", 1),
                ("skip_connect", 2),
                ("max_pool_3x3", 1),
                ("max_pool_3x3", 0),
                ("skip_connect", 2),
                ("skip_connect", 2),
                ("max_pool_3x3", 1),
            ),
        ),  # fmt: skip
        PublishedCell(
            "pc_darts",
            "Xu et al. 2020, PC-DARTS: Partial Channel Connections for Memory-Efficient "
            "Architecture Search (ICLR), CIFAR-10 search; genotypes.py of "
            "github.com/yuhuixu1993/PC-DARTS (PC_DARTS_cifar)",
            (
                ("sep_conv_3x3", 1),
                ("skip_connect", 0),
                ("sep_conv_3x3", 0),
                ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 0),
                ("sep_conv_3x3", 1),
                ("avg_pool_3x3", 0),
                ("dil_conv_3x3", 1),
            ),
            (
                ("sep_conv_5x5", 1),
                ("max_pool_3x3", 0),
                ("sep_conv_5x5", 1),
                ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0),
                ("sep_conv_3x3", 3),
                ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 2),
            ),
        ),  # fmt: skip
        PublishedCell(
            "p_darts",
            "Chen, Xie, Wu and Tian 2019, Progressive Differentiable Architecture Search "
            "(ICCV), CIFAR-10 search; genotypes.py of github.com/chenxin061/pdarts (PDARTS)",
            (
                ("skip_connect", 0),
                ("dil_conv_3x3", 1),
                ("skip_connect", 0),
                ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 3),
                ("sep_conv_3x3", 0),
                ("dil_conv_5x5", 4),
            ),
            (
                ("avg_pool_3x3", 0),
                ("sep_conv_5x5", 1),
                ("sep_conv_3x3", 0),
                ("dil_conv_5x5", 2),
                ("max_pool_3x3", 0),
                ("dil_conv_3x3", 1),
                ("dil_conv_3x3", 1),
                ("dil_conv_5x5", 3),
            ),
        ),  # fmt: skip
    )
}


def darts_cell(pairs: tuple[tuple[str, int], ...], inputs_per_node: int = 2) -> dict:
    """A cell listed DARTS's way (``inputs_per_node`` (op, input) pairs per node, in node
    order) in our genotype form (``CellGenotype.to_dict``): each node's inputs in
    ascending state order, every intermediate node concatenated."""
    if len(pairs) % inputs_per_node:
        raise GenotypeError(f"{len(pairs)} (op, input) pairs do not split into nodes of 2")
    nodes = []
    for lo in range(0, len(pairs), inputs_per_node):
        node = sorted(pairs[lo : lo + inputs_per_node], key=lambda p: p[1])
        nodes.append({"inputs": [{"op": op, "input": int(i)} for op, i in node]})
    return {"nodes": nodes, "concat": list(range(2, len(nodes) + 2))}


def published_genotype(name: str) -> dict:
    """The genotype (``Genotype.to_dict`` form) of a published cell by name."""
    try:
        cell = PUBLISHED[name]
    except KeyError:
        raise GenotypeError(
            f"no published cell named {name!r}; known: {', '.join(PUBLISHED)}"
        ) from None
    g = {"normal": darts_cell(cell.normal), "reduce": darts_cell(cell.reduce)}
    return Genotype.from_dict(g).to_dict()


def load_genotype(source: str) -> tuple[dict, str]:
    """(genotype in ``Genotype.to_dict`` form, where it came from: the name or the file) for
    ``source``: the name
    of a published cell, a run directory (its ``genotype.json``) or a JSON file holding a
    genotype, or a spec whose ``genotype`` is one. Raises ``GenotypeError``."""
    if source in PUBLISHED:
        return published_genotype(source), source
    path = Path(source)
    if path.is_dir():
        path = path / "genotype.json"
        if not path.is_file():
            raise GenotypeError(
                f"{source}: a run directory without genotype.json (the run has not derived "
                f"a cell yet, or it is not a NAS run)"
            )
    elif not path.is_file():
        raise GenotypeError(
            f"{source!r} is neither a published cell ({', '.join(PUBLISHED)}), nor a run "
            f"directory, nor a JSON file"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise GenotypeError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise GenotypeError(f"{path}: not valid JSON ({e})") from None
    if isinstance(doc, Mapping) and isinstance(doc.get("genotype"), Mapping):
        doc = doc["genotype"]  # a spec (a checkpoint's) rather than a bare genotype
    if not isinstance(doc, Mapping) or not all(c in doc for c in CELL_TYPES):
        raise GenotypeError(
            f"{path}: not a genotype: expected an object with 'normal' and 'reduce' cells "
            f"(the form of a run's genotype.json)"
        )
    return _parsed(doc, str(path)), str(path)


def _parsed(doc: Mapping[str, Any], where: str) -> dict:
    """The genotype's dict form, with a clear error for a malformed one."""
    for c in CELL_TYPES:
        cell = doc[c]
        if not isinstance(cell, Mapping) or not isinstance(cell.get("nodes"), list):
            raise GenotypeError(f"{where}: {c} cell: expected an object with a 'nodes' list")
        for j, node in enumerate(cell["nodes"]):
            ok = isinstance(node, Mapping) and isinstance(node.get("inputs"), list)
            ok = ok and all(
                isinstance(x, Mapping)
                and isinstance(x.get("op"), str)
                and isinstance(x.get("input"), int)
                and not isinstance(x.get("input"), bool)
                for x in node["inputs"]
            )
            if not ok:
                raise GenotypeError(
                    f"{where}: {c} cell, node s{j + 2}: expected "
                    f'{{"inputs": [{{"op": NAME, "input": STATE}}, ...]}}'
                )
        if "concat" in cell and not (
            isinstance(cell["concat"], list) and all(isinstance(i, int) for i in cell["concat"])
        ):
            raise GenotypeError(f"{where}: {c} cell: 'concat' must be a list of state numbers")
    g = {
        c: {
            "nodes": doc[c]["nodes"],
            "concat": doc[c].get("concat", list(range(2, len(doc[c]["nodes"]) + 2))),
        }
        for c in CELL_TYPES
    }
    return Genotype.from_dict(g).to_dict()


def genotype_spec(
    space: CellSpace, genotype: Mapping[str, Any], where: str = "genotype"
) -> ArchSpec:
    """The spec of the discrete network of ``genotype`` in ``space``: per node the
    combination of its inputs and per chosen edge its one op, every mixing weight exactly
    1 (as ``sample_genotype`` builds a random one). Raises ``GenotypeError`` naming the
    first thing that does not fit: the node count, a node without exactly ``space.k``
    distinct inputs, an input state that does not exist yet, an op outside the
    primitives (or ``none``), a concat other than all intermediate nodes."""
    g = Genotype.from_dict(genotype)
    masks = {}
    for c in CELL_TYPES:
        if c not in g.cells:
            raise GenotypeError(f"{where}: no {c} cell")
        cell = g.cells[c]
        if len(cell.nodes) != space.nodes:
            raise GenotypeError(
                f"{where}: the {c} cell has {len(cell.nodes)} intermediate nodes; the network "
                f"has {space.nodes} (model.darts.nodes)"
            )
        if list(cell.concat) != list(range(2, space.nodes + 2)):
            raise GenotypeError(
                f"{where}: the {c} cell concatenates states {list(cell.concat)}; the network "
                f"concatenates every intermediate node {list(range(2, space.nodes + 2))}"
            )
        ops = [[False] * len(space.primitives) for _ in range(space.num_edges)]
        combos = [False] * space.num_combos
        for j, node in enumerate(cell.nodes):
            name = f"{where}: {c} cell, node s{j + 2}"
            inputs = sorted(x.input for x in node.inputs)
            if len(set(inputs)) != len(inputs) or len(inputs) != space.k_of(j):
                raise GenotypeError(
                    f"{name}: inputs {inputs}; the space takes {space.k_of(j)} distinct "
                    f"inputs per node (model.darts.input_k)"
                )
            for x in node.inputs:
                if not 0 <= x.input < space.inputs_of(j):
                    raise GenotypeError(
                        f"{name}: input state {x.input} does not exist there (states "
                        f"0..{space.inputs_of(j) - 1})"
                    )
                if x.op not in space.primitives or x.op == "none":
                    raise GenotypeError(
                        f"{name}: op {x.op!r} is not one of the network's primitives "
                        f"(model.darts.primitives, none excluded): "
                        f"{', '.join(p for p in space.primitives if p != 'none')}"
                    )
                ops[space.edge(j, x.input)][space.primitives.index(x.op)] = True
            combos[space.combo_offsets[j] + space.combos[j].index(tuple(inputs))] = True
        masks[c] = CellMasks(ops, combos)
    return ArchSpec(masks, "combinations", g)


def source_spec(space: CellSpace, source: str) -> ArchSpec:
    """The spec of the genotype ``source`` names (``load_genotype``) in ``space``
    (``genotype_spec``); ``GenotypeError`` names what cannot be read or does not fit."""
    genotype, where = load_genotype(source)
    return genotype_spec(space, genotype, where)
