"""Streaming fragments: the model's parameters cut into F contiguous groups of modules, balanced by
size, each synchronized on its own schedule (Douillard et al. 2025, "Streaming DiLoCo with
overlapping communication"): peak bytes per sync step fall by about F.

A unit is a module that directly owns floating-point parameters; units keep their order in
``model.named_parameters()`` and are never split. The cut minimizes the largest fragment (the
classic linear-partition problem, solved exactly by dynamic programming over the cut points).
Buffers go with the module that holds them (a module without parameters goes with the nearest
parameter-owning module before it); optimizer state goes with its parameter.
"""

from __future__ import annotations

from torch import nn

from distsched._checks import check_int


def balanced_cuts(sizes: list[int], parts: int) -> list[int]:
    """Fragment index of each unit: ``parts`` contiguous non-empty groups minimizing the largest
    group sum (ties: earliest cuts). ``len(sizes) >= parts`` is required."""
    n = len(sizes)
    check_int("parts", parts, 1)
    if n < parts:
        raise ValueError(f"fragments must be <= the number of modules with parameters ({n}), got {parts}")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + int(s))
    inf = float("inf")
    # best[k][i]: smallest max-group-sum splitting the first i units into k groups; cut[k][i] the start
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    out, i = [0] * n, n
    for k in range(parts, 0, -1):
        j = cut[k][i]
        for u in range(j, i):
            out[u] = k - 1
        i = j
    return out


def assign_fragments(model: nn.Module, fragments: int) -> dict[int, int]:
    """``id(tensor) -> fragment`` for the model's floating-point parameters and buffers."""
    check_int("fragments", fragments, 1)
    index: dict[str, int] = {}  # module name -> unit, in order of first parameter
    sizes: list[int] = []
    owner: dict[int, str] = {}
    for name, p in model.named_parameters():
        if not (p.is_floating_point() and p.numel() > 0):
            continue
        prefix = name.rpartition(".")[0]
        if prefix not in index:
            index[prefix] = len(sizes)
            sizes.append(0)
        sizes[index[prefix]] += p.numel()
        owner[id(p)] = prefix
    if not sizes:
        return {}
    frag_of_unit = dict(zip(index, balanced_cuts(sizes, fragments)))
    out = {pid: frag_of_unit[prefix] for pid, prefix in owner.items()}
    current = 0
    for name, module in model.named_modules():
        current = frag_of_unit.get(name, current)
        for b in module.buffers(recurse=False):
            if b.is_floating_point() and b.numel() > 0:
                out.setdefault(id(b), current)
    return out
