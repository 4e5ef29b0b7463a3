"""Split audit: identity leakage between train, test and unseen, and byte-identical images across splits.

The public MUFAC holds hundreds of byte-identical images in different splits (SPEC
section 3); they are found here by content hash, reported, and optionally dropped.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

PARTS = ("forget", "retain", "test", "unseen")
# When a duplicate group spans several parts, the copy in the earliest part is kept:
# the forget copy must be forgotten (a retain copy would teach it back), and a test or
# unseen copy of a training image inflates accuracy or blurs the membership attack.
KEEP_ORDER = {part: rank for rank, part in enumerate(PARTS)}


def identity_overlap(identities: dict[str, set[str]]) -> dict[str, int]:
    """Shared identities per pair of train / test / unseen."""
    groups = {
        "train": identities.get("forget", set()) | identities.get("retain", set()),
        "test": identities.get("test", set()),
        "unseen": identities.get("unseen", set()),
    }
    return {f"{a}/{b}": len(groups[a] & groups[b]) for a, b in combinations(groups, 2)}


def find_duplicates(names: list[str], parts: list[str], hashes: list[str], max_examples: int = 5) -> dict:
    """Count byte-identical pairs lying in two different parts, and within one part."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(hashes):
        groups[digest].append(i)
    cross, within, examples = 0, 0, []
    drop: list[int] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        for i, j in combinations(members, 2):
            if parts[i] != parts[j]:
                cross += 1
                if len(examples) < max_examples:
                    examples.append({"a": names[i], "a_split": parts[i], "b": names[j], "b_split": parts[j]})
            else:
                within += 1
        keep_rank = min(KEEP_ORDER[parts[i]] for i in members)
        drop.extend(i for i in members if KEEP_ORDER[parts[i]] > keep_rank)
    return {
        "cross_split_pairs": cross,
        "within_split_pairs": within,
        "examples": examples,
        "droppable": sorted(drop),
    }


def leakage_message(overlap: dict[str, int], where: str) -> str | None:
    leaks = {pair: n for pair, n in overlap.items() if n}
    if not leaks:
        return None
    detail = ", ".join(f"{n} identities shared by {pair}" for pair, n in leaks.items())
    return f"{where}: identity leakage between splits ({detail}); the splits must be identity-disjoint"
