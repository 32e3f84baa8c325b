"""The paper's heads and headline numbers as data, and this run's numbers set beside them.

`PAPER_HEADS` names the heads the paper names, per paper model and role, and `PAPER_CONDITIONS` the
intervention's conditions (which head sets each overrides); every other module and notebook reads them here.

`PAPER_NUMBERS` restates the numbers of Merullo et al. (ICLR 2024) that this workflow measures, one row per
(paper model, family, metric), in the units the comparison uses: accuracies and rates in percent, logit
differences in logits, the overlap's IoU as a fraction and head counts in heads. Metric names are those of
`circuit_reuse.replicates.headline_rows`, so a run's headline numbers line up with them:
`compare_to_paper(headline_rows(baselines, overlap, ...), models)`.

A run's model is matched to a paper model by its config spec: a `hub_id` (pretrained weights) or an
`architecture` (random or local weights of that shape) equal to "gpt2", "gpt2-medium", "gpt2-large" or
"gpt2-xl". Any other model has no paper value. Overlap numbers are per pair of tasks
(`circuit_reuse.replicates.overlap_metric`); each row's source names the paper model it was reported for,
and says so where the paper leaves that unclear. A matched model with random weights is a stand-in: its
numbers say nothing about the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from circuit_reuse.circuits import Head

# The heads named in the text, (layer, head) per paper model and role. GPT-2 medium's are Merullo et al.'s
# (Sec. 4 and 5; the text once calls the inhibition head 13.13 "13.14", the authors' code uses 13.13), with
# the movers shared by IOI and Colored Objects and the negative mover apart. GPT-2 small's are Wang et al.'s
# IOI circuit (name movers, S-inhibition and induction heads), which the paper builds on.
PAPER_HEADS: dict[str, dict[str, tuple[Head, ...]]] = {
    "gpt2-small": {
        "movers": ((9, 9), (9, 6), (10, 0)),
        "inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
        "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    },
    "gpt2-medium": {
        "movers": ((15, 14), (16, 15), (17, 4), (18, 5), (19, 15)),
        "negative_mover": ((19, 1),),
        "inhibition": ((12, 3), (13, 4), (13, 13)),
        "content_gatherers": ((11, 6), (11, 7), (12, 15)),
        "induction": ((9, 3),),
    },
}
# The share of heads the paper keeps at every discovery stage (Sec. 4: the top 2%, about 8 of GPT-2 medium's 384).
PAPER_TOP_PERCENT = 2.0
# The intervention's conditions (Sec. 5): each overrides the attention of the named head sets.
PAPER_CONDITIONS: dict[str, tuple[str, ...]] = {
    "inhibition": ("inhibition",),
    "negative_mover": ("negative_mover",),
    "both": ("inhibition", "negative_mover"),
}

PAPER_MODELS = {"gpt2": "gpt2-small", "gpt2-medium": "gpt2-medium", "gpt2-large": "gpt2-large", "gpt2-xl": "gpt2-xl"}
PAPER_COLUMNS = ["model", "family", "metric", "value", "unit", "source"]
COMPARISON_COLUMNS = [
    "model", "paper_model", "weights", "family", "metric", "unit", "run", "paper", "gap", "source",
]  # fmt: skip
FAMILIES = ("baseline", "overlap", "faithfulness", "intervention", "movers")
# The factor that takes a run's value (as its tables store it) to the paper's unit.
UNIT_SCALE = {
    "%": 100.0, "pp": 100.0, "logits": 1.0, "fraction": 1.0, "heads": 1.0, "prompts": 1.0, "rho": 1.0, "ratio": 1.0,
}  # fmt: skip

_ROWS = [
    ("gpt2-small", "baseline", "ioi.metric_mean", 3.56, "logits",
     "Wang et al. (2022), cited in Sec. 2: mean IO-S logit difference over 100k IOI prompts"),
    ("gpt2-small", "baseline", "ioi.beats_distractor_rate", 99.3, "%",
     "Wang et al. (2022): IO logit above S logit"),
    ("gpt2-small", "baseline", "ioi.prob_target_mean", 49.0, "%",
     "Wang et al. (2022): mean IO probability 0.49"),
    ("gpt2-small", "faithfulness", "ioi.faithfulness", 87.0, "%",
     "Wang et al. (2022): the IOI circuit keeps 87% of the logit difference (mean ablation over ABC prompts)"),
    ("gpt2-medium", "baseline", "colored_objects.accuracy", 49.6, "%",
     "Sec. 5 (intervention): Colored Objects accuracy without intervention"),
    ("gpt2-medium", "overlap", "ioi-colored_objects.iou", 25 / 32, "fraction",
     "Sec. 4, GPT-2 medium: 25 of the 32 heads in the union of the IOI and Colored Objects circuits"),
    ("gpt2-medium", "overlap", "ioi-colored_objects.shared", 25.0, "heads",
     "Sec. 4, GPT-2 medium: heads in both circuits"),
    ("gpt2-medium", "overlap", "ioi-greater_than.iou", 3 / 18, "fraction",
     "Appendix (control tasks): 3 of 18 heads shared by IOI and Greater-Than (16.7%); the model is not stated "
     "beside the number (unclear), taken as GPT-2 medium, the model of the main comparison"),
    ("gpt2-medium", "overlap", "ioi-greater_than.shared", 3.0, "heads",
     "Appendix (control tasks): 3 heads shared by IOI and Greater-Than; model unclear, taken as GPT-2 medium"),
    ("gpt2-medium", "overlap", "ioi-world_capitals.iou", 0.25, "fraction",
     "Appendix (control tasks): IOI and World Capitals share 25%; the model is not stated beside the number "
     "(unclear), taken as GPT-2 medium, the model of the main comparison"),
    ("gpt2-large", "overlap", "ioi-colored_objects.top10_logits_shared", 5.0, "heads",
     "Appendix (larger models), GPT-2 large: 5 of the top-10 heads of the logits stage shared by IOI and "
     "Colored Objects"),
    ("gpt2-xl", "overlap", "ioi-colored_objects.top10_logits_shared", 0.0, "heads",
     "Appendix (larger models), GPT-2 XL: 0 of the top-10 heads of the logits stage shared by IOI and "
     "Colored Objects"),
    ("gpt2-medium", "intervention", "none.accuracy", 49.6, "%",
     "Sec. 5, intervention figure: no intervention"),
    ("gpt2-medium", "intervention", "inhibition.accuracy", 81.5, "%",
     "Sec. 5: inhibition heads 12.3, 13.4, 13.13 overridden"),
    ("gpt2-medium", "intervention", "negative_mover.accuracy", 78.1, "%",
     "Sec. 5: negative mover 19.1 overridden"),
    ("gpt2-medium", "intervention", "both.accuracy", 93.7, "%",
     "Sec. 5: inhibition heads and negative mover overridden"),
    ("gpt2-medium", "intervention", "both.introduced", 0.0, "prompts",
     "Sec. 5: the full intervention makes no new mistakes"),
    ("gpt2-medium", "intervention", "content_gatherers_blocked.accuracy", 35.0, "%",
     "Sec. 5: content gatherers 11.6, 11.7, 12.15 blocked from the question (random heads: 49.9 +/- 1.0)"),
    ("gpt2-medium", "intervention", "content_gatherers_blocked.random_accuracy", 49.9, "%",
     "Sec. 5: random heads blocked instead of the content gatherers (+/- 1.0)"),
    ("gpt2-medium", "movers", "both.attn_answer_change", 2.7, "pp",
     "Sec. 5: under the full intervention the mover heads attend 2.7% more to the right colour (read as "
     "percentage points of attention, averaged over the movers)"),
    ("gpt2-medium", "movers", "both.attn_wrong_change", -8.7, "pp",
     "Sec. 5: under the full intervention the mover heads attend 8.7% less to the wrong colours (percentage "
     "points, averaged over the movers)"),
    ("gpt2-medium", "movers", "both.dla_ratio", 3.0, "ratio",
     "Sec. 5: the movers' direct logit attribution grows \"about 3x\" under the full intervention (approximate)"),
    ("gpt2-medium", "movers", "both.spearman_rho", 0.69, "rho",
     "Sec. 5: mover heads' change against path-patching importance, Spearman, p < 0.01"),
]  # fmt: skip

PAPER_NUMBERS = pd.DataFrame(_ROWS, columns=PAPER_COLUMNS)


def paper_model(spec: Mapping[str, Any]) -> str | None:
    """The paper model a run's model stands for ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"), or
    None: its `hub_id`, else its `architecture`, must be one of PAPER_MODELS."""
    for key in ("hub_id", "architecture"):
        name = spec.get(key)
        if name is not None:
            return PAPER_MODELS.get(str(name))
    return None


def weights_kind(spec: Mapping[str, Any]) -> str:
    """How the model's weights were obtained: "pretrained" (hub), "random" (a stand-in) or the source named."""
    source = str(spec.get("source", "unknown"))
    return {"hub": "pretrained", "random": "random"}.get(source, source)


def compare_to_paper(headline: pd.DataFrame, models: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """This run's numbers beside the paper's, one row per (run model, metric the paper reports).

    `headline` is a run's headline numbers (columns model, family, metric, value, as `headline_rows` builds
    them); `models` maps each run model to its config spec. A model matched to a paper model gets that
    model's metrics, with `run` in the paper's unit (NaN where the run did not measure it), `paper` and
    `gap` = run - paper. An unmatched model gets every metric the paper reports, with no paper value. Rows
    are ordered by model, then family, then as in `PAPER_NUMBERS`.
    """
    values = {(r["model"], r["metric"]): float(r["value"]) for r in headline.to_dict("records")}
    rows = []
    for model in sorted(models):
        spec = models[model]
        matched = paper_model(spec)
        if matched is None:
            reference = PAPER_NUMBERS.drop_duplicates("metric").assign(value=np.nan, source="")
        else:
            reference = PAPER_NUMBERS[PAPER_NUMBERS["model"] == matched]
        for record in reference.to_dict("records"):
            run = values.get((model, record["metric"]), np.nan) * UNIT_SCALE[record["unit"]]
            rows.append(
                {"model": model, "paper_model": matched or "", "weights": weights_kind(spec),
                 "family": record["family"], "metric": record["metric"], "unit": record["unit"], "run": run,
                 "paper": record["value"], "gap": run - record["value"], "source": record["source"]}
            )  # fmt: skip
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    order = {family: i for i, family in enumerate(FAMILIES)}
    table["_family"] = table["family"].map(order)
    table = table.sort_values(["model", "_family"], kind="stable").drop(columns="_family")
    return table.reset_index(drop=True)
