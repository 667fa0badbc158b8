"""95% intervals over test rows and seeds, averages, transfer gaps, paired differences.

Every task reduces each test row to a few counts (`row_stats`, shape
[rows, k]) whose column sums give the metric (`METRICS`):

- `accuracy`: (correct, total) -> correct / total (sentence tasks: total = 1
  a row; POS: correct words and words of one sentence);
- `f1`: (true positives, predicted entities, gold entities) of one sentence
  -> 2 tp / (predicted + gold), the micro entity F1 seqeval computes;
- `squad_f1`: (F1 of the question, 1) -> the mean F1 over questions, what
  MLQA's evaluation reports (a question's F1: its best over the gold answers,
  with MLQA's normalization: `tf_mbalign.tasks.mlqa.question_counts`); the
  resampling unit is the question, whatever number of windows it was cut into.

How one cell's interval is computed (a task, a language, S seeds):

1. Point estimate: m = mean over seeds of m_s, each m_s the metric on all the
   test rows of seed s's fine-tuned model.
2. Test-row variance, by a paired bootstrap: B replicates (default 1,000);
   replicate b draws the rows' multiplicities w_b ~ Multinomial(n, 1/n) once,
   and the *same* w_b re-weights the rows of every seed (and, for a
   difference, of both encoders: that is the pairing). The replicate's value
   is T_b = mean over seeds of metric(w_b @ row_stats_s). v_rows = the sample
   variance of T_1..T_B.
3. Seed variance: v_seeds = var(m_1..m_S, ddof=1) / S (0 with one seed): the
   spread the fine-tuning seed adds to the mean of S runs.
4. Interval: m ± 1.96 * sqrt(v_rows + v_seeds) (normal approximation; the
   bounds are not clipped to [0, 1], which only matters with a handful of
   test rows).

Aggregates use the same replicates: the average over non-English languages
takes, per seed and replicate, the mean of the languages' values (each
language resampled with its own w_b, languages being separate test sets);
the transfer gap is English minus that average, per seed and replicate; a
difference between two encoders is B minus A per seed (seeds paired by their
number) and replicate. Each then goes through steps 1-4.

With K cells tested at 95%, about 0.05 K pass by chance when nothing
changed (`chance_passes`); the report says so next to the count that moved.
"""

import dataclasses
import math
import zlib

import numpy as np

Z_95 = 1.959963984540054
DEFAULT_REPLICATES = 1000


def _ratio(sums):
    """First column over second: accuracy, or a mean of per-row scores."""
    return np.divide(sums[..., 0], sums[..., 1], out=np.zeros(sums.shape[:-1]),
                     where=sums[..., 1] > 0)


def _entity_f1(sums):
    denominator = sums[..., 1] + sums[..., 2]
    return np.divide(2.0 * sums[..., 0], denominator, out=np.zeros(sums.shape[:-1]),
                     where=denominator > 0)


METRICS = {"accuracy": _ratio, "f1": _entity_f1, "squad_f1": _ratio}
STATS_COLUMNS = {"accuracy": ("correct", "total"), "f1": ("true_positive", "predicted", "gold"),
                 "squad_f1": ("f1", "questions")}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval and the two variance parts."""

    mean: float
    low: float
    high: float
    row_std: float  # sqrt(v_rows)
    seed_std: float  # sqrt(v_seeds)

    @property
    def half_width(self):
        return (self.high - self.low) / 2.0

    def excludes_zero(self):
        return self.low > 0.0 or self.high < 0.0

    def to_json(self):
        return {**dataclasses.asdict(self), "half_width": self.half_width}


def metric_value(metric, row_stats):
    """The metric of all rows: `METRICS[metric]` of the column sums."""
    return float(METRICS[metric](np.asarray(row_stats, np.float64).sum(axis=0)))


def bootstrap_weights(n_rows, replicates, key):
    """int [replicates, n_rows] multiplicities, the same for the same `key`.

    The key (e.g. "nli/de") seeds the generator, so two encoders' jobs, and
    every seed, get the same resamples of one test set: the pairing.
    """
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=replicates)


def seed_replicates(metric, row_stats_per_seed, weights):
    """float [seeds, replicates]: the metric of every seed on every resample."""
    out = []
    for row_stats in row_stats_per_seed:
        sums = weights.astype(np.float64) @ np.asarray(row_stats, np.float64)
        out.append(METRICS[metric](sums))
    return np.asarray(out)


def combine(per_seed_values, replicates):
    """Steps 1-4 of the module docstring.

    Args:
        per_seed_values: [S] the statistic on all rows, per seed.
        replicates: [S, B] the statistic on each bootstrap resample, per seed.

    Returns:
        an `Interval`.
    """
    values = np.asarray(per_seed_values, np.float64)
    replicates = np.asarray(replicates, np.float64)
    mean = float(values.mean())
    row_variance = float(np.var(replicates.mean(axis=0), ddof=1))
    seed_variance = float(np.var(values, ddof=1)) / len(values) if len(values) > 1 else 0.0
    half_width = Z_95 * math.sqrt(row_variance + seed_variance)
    return Interval(mean, mean - half_width, mean + half_width, math.sqrt(row_variance),
                    math.sqrt(seed_variance))


def chance_passes(cells, level=0.95):
    """(expected, upper) false passes among `cells` independent null cells.

    expected = (1 - level) * cells; upper = the smallest k with
    P(Binomial(cells, 1 - level) <= k) >= level.
    """
    p = 1.0 - level
    cumulative = 0.0
    for k in range(cells + 1):
        cumulative += math.comb(cells, k) * p ** k * (1 - p) ** (cells - k)
        if cumulative >= level:
            return p * cells, k
    return p * cells, cells


# === One table (a task's metric) of one or two encoders ===

@dataclasses.dataclass
class CellSamples:
    """Per-seed values [S] and bootstrap replicates [S, B] of one statistic."""

    values: np.ndarray
    replicates: np.ndarray

    def interval(self):
        return combine(self.values, self.replicates)

    def __sub__(self, other):
        return CellSamples(self.values - other.values, self.replicates - other.replicates)


def mean_of(cells):
    """The per-seed, per-replicate mean of several cells (an average over languages)."""
    return CellSamples(np.mean([c.values for c in cells], axis=0),
                       np.mean([c.replicates for c in cells], axis=0))


def language_samples(table, name, replicates):
    """{language: CellSamples} of one job table (see `tasks.runner`)."""
    metric = table["metric"]
    samples = {}
    for language, cell in table["languages"].items():
        stats = [np.asarray(s, np.float64) for s in cell["row_stats"]]
        weights = bootstrap_weights(len(stats[0]), replicates, f"{name}/{language}")
        samples[language] = CellSamples(
            np.array([metric_value(metric, s) for s in stats]),
            seed_replicates(metric, stats, weights))
    return samples


def aggregates(samples, english="en"):
    """{"non_english_average": ..., "transfer_gap": ...} CellSamples (None when absent)."""
    others = [s for language, s in sorted(samples.items()) if language != english]
    average = mean_of(others) if others else None
    gap = samples[english] - average if english in samples and average is not None else None
    return {"non_english_average": average, "transfer_gap": gap}


def summarize_table(name, tables, replicates=DEFAULT_REPLICATES):
    """Intervals of one table for one or two encoders (`tables` in encoder order).

    Returns:
        {"metric", "encoders": [{"languages": {lang: Interval json},
         "non_english_average", "transfer_gap"}], and with two encoders
         "difference": the same for B minus A plus "moved": languages whose
         difference interval excludes 0}.
    """
    per_encoder = [language_samples(t, name, replicates) for t in tables]
    summary = {"metric": tables[0]["metric"], "encoders": [_intervals(s) for s in per_encoder]}
    if len(per_encoder) == 2:
        first, second = per_encoder
        _check_paired(name, tables)
        difference = {lang: second[lang] - first[lang] for lang in first if lang in second}
        summary["difference"] = _intervals(difference)
        summary["difference"]["moved"] = sorted(
            lang for lang, cell in summary["difference"]["languages"].items()
            if cell["low"] > 0 or cell["high"] < 0)
    return summary


def _intervals(samples):
    out = {"languages": {lang: s.interval().to_json() for lang, s in sorted(samples.items())}}
    for key, cell in aggregates(samples).items():
        out[key] = cell.interval().to_json() if cell is not None else None
    return out


def _check_paired(name, tables):
    first, second = tables
    for language in set(first["languages"]) & set(second["languages"]):
        rows = [len(t["languages"][language]["row_stats"][0]) for t in tables]
        seeds = [len(t["languages"][language]["row_stats"]) for t in tables]
        if rows[0] != rows[1] or seeds[0] != seeds[1]:
            raise ValueError(f"{name}/{language}: the two encoders were tested on {rows} rows "
                             f"with {seeds} seeds; a paired difference needs the same.")
