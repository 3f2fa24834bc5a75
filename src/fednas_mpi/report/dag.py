"""Drawing a genotype's cell as a DAG with plain matplotlib (no graphviz).

A cell reads the two previous cells' outputs (c_{k-2} = s0, c_{k-1} = s1); intermediate
node s_{j+2} sums its chosen inputs, each through one op; the cell output c_k
concatenates the nodes listed in ``concat``. Inputs sit on the left, the nodes on a
zig-zag line to the right, the output on the far right; every edge is an arrow
labelled with its op, in the op's colour.
"""

from __future__ import annotations

import zlib

import numpy as np

#: One colour per DARTS primitive; other op names get a colour from their name.
OP_COLOURS = {
    "none": "#7f7f7f",
    "max_pool_3x3": "#1f77b4",
    "avg_pool_3x3": "#17becf",
    "skip_connect": "#2ca02c",
    "sep_conv_3x3": "#d62728",
    "sep_conv_5x5": "#ff7f0e",
    "dil_conv_3x3": "#9467bd",
    "dil_conv_5x5": "#8c564b",
}
_FALLBACK = ("#e377c2", "#bcbd22", "#393b79", "#637939", "#843c39")


def op_colour(op: str) -> str:
    return OP_COLOURS.get(op) or _FALLBACK[zlib.crc32(op.encode()) % len(_FALLBACK)]


def positions(num_nodes: int) -> dict[str, tuple[float, float]]:
    """Where each state is drawn: s0, s1 (inputs), s2.. (nodes), out (cell output)."""
    pos = {"s0": (0.0, 0.9), "s1": (0.0, -0.9)}
    for j in range(num_nodes):
        pos[f"s{j + 2}"] = (1.4 * (j + 1), 0.55 if j % 2 else -0.55)
    pos["out"] = (1.4 * (num_nodes + 1), 0.0)
    return pos


#: Candidate curvatures of an edge, straightest first.
_BENDS = (0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5, 0.7, -0.7)
_CLEARANCE = 0.4  # how far (data units) an edge should pass from other nodes' centres


def _bend(pos: dict[str, tuple[float, float]], source: str, target: str) -> float:
    """arc3's rad for an edge: the straightest curve that passes clear of every other
    node, so that no edge seems to go through a node it does not touch (else the
    curve with the most room)."""
    others = np.array([xy for k, xy in pos.items() if k not in (source, target)])
    t = np.linspace(0.05, 0.95, 40)
    best, room = 0.0, -1.0
    for rad in _BENDS:
        x, y = _curve_point(pos[source], pos[target], rad, t)
        gap = float(np.min(np.hypot(x[:, None] - others[:, 0], y[:, None] - others[:, 1])))
        if gap >= _CLEARANCE:
            return rad
        if gap > room:
            best, room = rad, gap
    return best


def _curve_point(a: tuple[float, float], b: tuple[float, float], rad: float, t):
    """The point at t of matplotlib's arc3 curve from a to b (a quadratic Bezier)."""
    (x1, y1), (x2, y2) = a, b
    dx, dy = x2 - x1, y2 - y1
    # arc3's control point: the chord's midpoint moved by rad * (dy, -dx)
    cx, cy = (x1 + x2) / 2 + rad * dy, (y1 + y2) / 2 - rad * dx
    u = 1.0 - t
    return u * u * x1 + 2 * u * t * cx + t * t * x2, u * u * y1 + 2 * u * t * cy + t * t * y2


#: Where along an edge its label may go, most preferred first.
_LABEL_AT = (0.5, 0.35, 0.65, 0.25, 0.75)
_LABEL_BOX = (0.8, 0.22)  # a label's extent in data units (about), for avoiding overlaps


def _label_point(
    a: tuple[float, float], b: tuple[float, float], rad: float, taken: list[tuple[float, float]]
) -> tuple[float, float]:
    """The first point along the edge whose label overlaps no label placed before."""
    w, h = _LABEL_BOX
    for t in _LABEL_AT:
        x, y = _curve_point(a, b, rad, t)
        if all(abs(x - u) >= w or abs(y - v) >= h for u, v in taken):
            break
    else:
        x, y = _curve_point(a, b, rad, 0.5)
    taken.append((x, y))
    return x, y


def draw_cell(ax, cell: dict, title: str) -> None:
    """Draw one cell of a genotype (``{"nodes": [{"inputs": [{op, input}, ...]}], "concat"}``)."""
    from matplotlib.patches import FancyArrowPatch

    nodes = cell.get("nodes", [])
    pos = positions(len(nodes))
    names = {"s0": "c_{k-2}", "s1": "c_{k-1}", "out": "c_{k}"}
    taken: list[tuple[float, float]] = []
    for j, node in enumerate(nodes):
        target = f"s{j + 2}"
        for edge in node.get("inputs", []):
            source = f"s{int(edge['input'])}"
            rad = _bend(pos, source, target)
            colour = op_colour(str(edge["op"]))
            ax.add_patch(
                FancyArrowPatch(
                    pos[source],
                    pos[target],
                    arrowstyle="-|>",
                    mutation_scale=14,
                    color=colour,
                    lw=1.8,
                    connectionstyle=f"arc3,rad={rad}",
                    shrinkA=17,
                    shrinkB=17,
                    zorder=1,
                )
            )
            x, y = _label_point(pos[source], pos[target], rad, taken)
            ax.text(
                x,
                y,
                str(edge["op"]),
                fontsize=8,
                color=colour,
                ha="center",
                va="center",
                zorder=3,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"},
            )
    for j in cell.get("concat", range(2, len(nodes) + 2)):
        ax.add_patch(
            FancyArrowPatch(
                pos[f"s{j}"],
                pos["out"],
                arrowstyle="-|>",
                mutation_scale=12,
                color="#555555",
                lw=1.0,
                ls="--",
                shrinkA=17,
                shrinkB=17,
                zorder=1,
            )
        )
    for key, (x, y) in pos.items():
        is_io = key in names
        ax.scatter(
            [x], [y], s=900, zorder=2, edgecolors="black", c="#c6dbef" if is_io else "#fdd0a2"
        )
        label = f"${names[key]}$" if is_io else key
        ax.text(x, y, label, ha="center", va="center", fontsize=9, zorder=4)
    xs = np.array([p[0] for p in pos.values()])
    ax.set_xlim(xs.min() - 0.5, xs.max() + 0.5)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal", adjustable="box")
    ax.axis("off")
    ax.set_title(title)
