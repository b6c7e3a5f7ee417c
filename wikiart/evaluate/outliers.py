"""Outlier scores: which paintings look unlike their labelled class (likely label errors).

Each painting's fused embedding (`model.embed`, the features the heads see) is L2-normalised
and compared by cosine similarity with every class centroid of a task (the renormalised mean
of the normalised embeddings of that class, on the training split by default). Per painting:

    own        similarity to the centroid of its labelled class
    other      the most similar other class and that similarity
    margin     own - other (negative: it sits closer to another class)
    mismatch   the head predicts another class
    score      (1 - own) - margin + mismatch * confidence

Every term grows with suspicion: far from its own class, nearer another class, and a
confident prediction of something else. Sorting by score puts likely mislabelled paintings first.

A model with several heads also gets `joint_outlier_table`, the seed's combined ranking: over the
paintings labelled for every head, the mean over heads of (1 - probability of the true class).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .metrics import joint_rows, log_softmax, predicted_classes


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def class_sums(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums (C, D) of the L2-normalised embeddings per class, counts (C,)); -1 labels skipped."""
    mask = labels >= 0
    z = l2_normalize(embeddings[mask])
    sums = np.zeros((num_classes, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[mask], z)
    return sums, np.bincount(labels[mask], minlength=num_classes).astype(np.int64)


def centroids_from_sums(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit centroids (C, D), present (C,) bool); a class without samples has a zero row."""
    present = counts > 0
    return l2_normalize(sums), present


def class_centroids(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of the labelled embeddings (see `centroids_from_sums`)."""
    return centroids_from_sums(*class_sums(embeddings, labels, num_classes))


@dataclasses.dataclass
class OutlierTable:
    """Per labelled painting of one task, sorted most suspicious first."""
    keys: list[str]
    labels: np.ndarray          # true class index
    predicted: np.ndarray       # argmax of the head
    confidence: np.ndarray      # softmax probability of the prediction
    true_prob: np.ndarray       # softmax probability of the labelled class
    own_sim: np.ndarray         # cosine similarity to the own class centroid (nan: no centroid)
    other: np.ndarray           # nearest other class (-1: none)
    other_sim: np.ndarray
    margin: np.ndarray
    mismatch: np.ndarray        # bool
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, class_names: list[str]) -> list[dict]:
        """One dict per painting in rank order (the CSV's rows, without the source path)."""
        def name(i: int) -> str:
            return class_names[i] if i >= 0 else ""
        return [{"rank": r + 1, "key": self.keys[r], "true": name(int(self.labels[r])),
                 "predicted": name(int(self.predicted[r])), "confidence": float(self.confidence[r]),
                 "true_probability": float(self.true_prob[r]), "own_similarity": float(self.own_sim[r]),
                 "nearest_other": name(int(self.other[r])), "other_similarity": float(self.other_sim[r]),
                 "margin": float(self.margin[r]), "mismatch": bool(self.mismatch[r]),
                 "score": float(self.score[r])} for r in range(len(self))]


def suspicion(own_sim: np.ndarray, other_sim: np.ndarray, mismatch: np.ndarray,
              confidence: np.ndarray) -> np.ndarray:
    """The combined score (higher = more suspicious); a missing centroid counts as similarity 0."""
    own = np.nan_to_num(own_sim, nan=0.0)
    margin = own - np.nan_to_num(other_sim, nan=0.0)
    return (1.0 - own) - margin + mismatch.astype(np.float64) * confidence


def outlier_table(keys: list[str], embeddings: np.ndarray, labels: np.ndarray, logits: np.ndarray,
                  centroids: np.ndarray, present: np.ndarray) -> OutlierTable:
    """Score the labelled rows of one task against its class centroids, most suspicious first."""
    mask = labels >= 0
    y = labels[mask]
    rows = np.arange(len(y))
    sims = l2_normalize(embeddings[mask]) @ centroids.T
    sims[:, ~present] = np.nan
    own = sims[rows, y]
    others = np.where(np.isnan(sims), -np.inf, sims)
    others[rows, y] = -np.inf
    other = others.argmax(axis=1) if others.shape[1] else np.zeros(len(y), np.int64)
    other_sim = others[rows, other] if len(y) else np.zeros(0)
    no_other = ~np.isfinite(other_sim)
    other, other_sim = np.where(no_other, -1, other), np.where(no_other, np.nan, other_sim)
    probs = np.exp(log_softmax(logits[mask].astype(np.float64)))
    predicted = probs.argmax(axis=1)
    confidence, true_prob = probs[rows, predicted], probs[rows, y]
    margin = own - other_sim
    mismatch = predicted != y
    score = suspicion(own, other_sim, mismatch, confidence)
    kept = [k for k, m in zip(keys, mask) if m]
    order = np.lexsort((np.array(kept, dtype=str), -score)) if kept else rows  # ties: by key
    return OutlierTable(keys=[kept[i] for i in order], labels=y[order], predicted=predicted[order],
                        confidence=confidence[order], true_prob=true_prob[order], own_sim=own[order],
                        other=other[order], other_sim=other_sim[order], margin=margin[order],
                        mismatch=mismatch[order], score=score[order])


# ---------------------------------------------------------------------------------------------
# The joint ranking of a multi-head model (the seed's combined outlier cell).
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class JointOutlierTable:
    """Per painting labelled for every head, sorted most suspicious first (arrays per task)."""
    keys: list[str]
    labels: dict[str, np.ndarray]
    predicted: dict[str, np.ndarray]
    true_prob: dict[str, np.ndarray]    # softmax probability of the labelled class
    score: np.ndarray                   # mean over tasks of (1 - true_prob)
    mismatch_count: np.ndarray          # how many heads predict another class

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, class_names: dict[str, list[str]]) -> list[dict]:
        """One dict per painting in rank order: per task `<task>_true`, `_predicted`, `_p_true`,
        `_mismatch`, then `combined_outlier_score` and `mismatch_count` (the CSV's columns)."""
        out = []
        for r in range(len(self)):
            row: dict = {"rank": r + 1, "key": self.keys[r]}
            for t, names in class_names.items():
                y, p = int(self.labels[t][r]), int(self.predicted[t][r])
                row.update({f"{t}_true": names[y], f"{t}_predicted": names[p],
                            f"{t}_p_true": float(self.true_prob[t][r]), f"{t}_mismatch": p != y})
            row.update(combined_outlier_score=float(self.score[r]), mismatch_count=int(self.mismatch_count[r]))
            out.append(row)
        return out


def joint_outlier_table(keys: list[str], labels: dict[str, np.ndarray], logits: dict[str, np.ndarray],
                        population: np.ndarray | None = None) -> JointOutlierTable:
    """The seed's combined outlier ranking over the paintings labelled for every head:
    `combined_outlier_score` = mean over heads of (1 - probability of the true class), ties by
    `mismatch_count` (heads that predict another class), both descending, then by key.

    Deliberate fix: the probabilities are the model's own (softmax of its real logits). The seed
    applies the heads to L2-normalised features instead, which gives near-uniform "probabilities"
    (true-class values of about 0.04-0.10) unrelated to the model's predictions. `population`
    narrows the paintings further, as for the joint metrics (evaluation.seed_population).
    """
    rows = joint_rows(labels) if population is None else joint_rows(labels) & population
    kept = [k for k, m in zip(keys, rows) if m]
    idx = np.arange(len(kept))
    y = {t: labels[t][rows] for t in logits}
    pred = {t: predicted_classes(logits[t][rows]) for t in logits}
    p_true = {t: np.exp(log_softmax(logits[t][rows].astype(np.float64)))[idx, y[t]] for t in logits}
    score = np.mean([1.0 - p_true[t] for t in logits], axis=0) if kept else np.zeros(0)
    count = np.sum([pred[t] != y[t] for t in logits], axis=0).astype(np.int64) if kept else np.zeros(0, np.int64)
    order = np.lexsort((np.array(kept, dtype=str), -count, -score)) if kept else idx
    return JointOutlierTable(keys=[kept[i] for i in order], labels={t: v[order] for t, v in y.items()},
                             predicted={t: v[order] for t, v in pred.items()},
                             true_prob={t: v[order] for t, v in p_true.items()},
                             score=score[order], mismatch_count=count[order])
