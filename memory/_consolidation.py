"""Level 3: cluster insights by embedding and keep the clusters that span several problems."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from procmem.memory._entries import Entry

__all__ = ["Cluster", "cluster_insights", "pattern_fields"]


@dataclass(frozen=True)
class Cluster:
    """Insights that say much the same thing, nearest to the centroid first."""

    members: tuple[Entry, ...]
    centroid: npt.NDArray[np.float32]

    @property
    def problem_ids(self) -> tuple[str, ...]:
        return tuple(sorted({p for m in self.members for p in m.problem_ids}))

    @property
    def member_ids(self) -> frozenset[str]:
        return frozenset(m.id for m in self.members)

    @property
    def medoid(self) -> Entry:
        """The member closest to the centroid: the extractive summary of the cluster."""
        return self.members[0]


def cluster_insights(entries: Sequence[Entry], vectors: npt.NDArray[np.float32], threshold: float) -> list[Cluster]:
    """Greedy leader clustering, deterministic: entries are visited widest first (most problems, then
    id); each joins the cluster whose centroid is most similar if that similarity reaches ``threshold``,
    else starts a new cluster."""
    order = sorted(range(len(entries)), key=lambda i: (-len(entries[i].problem_ids), entries[i].id))
    groups: list[list[int]] = []
    sums: list[npt.NDArray[np.float32]] = []
    for i in order:
        if sums:
            centroids = np.stack([s / np.linalg.norm(s) for s in sums])
            sims = centroids @ vectors[i]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                groups[best].append(i)
                sums[best] = sums[best] + vectors[i]
                continue
        groups.append([i])
        sums.append(vectors[i].astype(np.float32).copy())
    clusters = []
    for group, total in zip(groups, sums, strict=True):
        centroid = (total / np.linalg.norm(total)).astype(np.float32)
        ranked = sorted(group, key=lambda i: (-float(vectors[i] @ centroid), entries[i].id))
        clusters.append(Cluster(tuple(entries[i] for i in ranked), centroid))
    return clusters


def pattern_fields(cluster: Cluster) -> dict[str, object]:
    """Provenance of a pattern made from ``cluster``: problems, sources, evidence, suite and versions."""
    members = cluster.members
    evidence: dict[str, dict[str, int]] = {}
    for member in members:
        for problem, counts in member.evidence.items():
            mine = evidence.setdefault(problem, {})
            for key, value in counts.items():
                mine[key] = max(mine.get(key, 0), value)
    return {
        "suite": _most_common(m.suite for m in members),
        "policy_version": _most_common(m.policy_version for m in members),
        "validated_version": _most_common(m.validated_version for m in members),
        "problem_ids": cluster.problem_ids,
        "source_entry_ids": tuple(sorted(cluster.member_ids)),
        "source_episode_ids": tuple(dict.fromkeys(e for m in members for e in m.source_episode_ids)),
        "evidence": evidence,
    }


def _most_common(values: Iterable[str]) -> str:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))
