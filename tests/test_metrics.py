"""Every metric function against cases computed by hand."""

import math

import numpy as np
import pytest
import torch

from moir.metrics import (
    MMBENCH_VIDEO_DIMENSIONS,
    binomial_interval,


    base_reading,
    effective_rank,
    exact_match,
    implied_sample_size,
    implied_sample_sizes,
    judged_correct_share,
    layer_groups,
    mmbench_video_dimension_ratings,
    mmbench_video_mean_scores,
    modality_dominance,
    normalize_answer,
    normalize_vizwiz_answer,
    paper_percentage_interval,
    parse_option_letter,
    robustness_summary,
    unchanged_rate,
    vision_irrelevant_split,
    vizwiz_accuracy,
    vizwiz_accuracy_by_answer_type,
    vizwiz_predicts_unanswerable,
    vizwiz_unanswerability,
    vqa_accuracy,
    vqa_correct,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Yes", "yes"),
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # a decimal point stays
        ("The Red Car", "red car"),  # articles go, lower case
        ("an apple", "apple"),
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("dont", "don't"),  # contractions get their apostrophe
        ("Whats that", "what's that"),
        ("1,000", "1000"),  # digit,digit: punctuation removed, not replaced
        ("black/white", "black white"),  # otherwise punctuation becomes a space
        ("black / white", "black white"),  # punctuation next to a space is removed
        ("hi, there!", "hi there"),
        ("line\nbreak\tand tab ", "line break and tab"),
        ("a-b", "b"),  # "a b": the article goes
        ("unanswerable", "unanswerable"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_vqa_accuracy_leave_one_out():
    # m annotators agree with the prediction out of 10: leaving out an agreeing one leaves m-1 matches,
    # leaving out another one leaves m; the mean over the 10 subsets of min(matches/3, 1):
    assert vqa_accuracy("yes", ["yes"] * 4 + ["no"] * 6) == pytest.approx(1.0)  # (4*1 + 6*1)/10
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)  # (3*2/3 + 7*1)/10
    assert vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)  # (2*1/3 + 8*2/3)/10
    assert vqa_accuracy("yes", ["yes"] * 1 + ["no"] * 9) == pytest.approx(0.3)  # (1*0 + 9*1/3)/10
    assert vqa_accuracy("maybe", ["yes"] * 10) == 0.0


def test_vqa_accuracy_normalises_as_the_vqa_v2_script():
    answers = ["Two", "2", "two.", "2 ", "three", "3", "3", "3", "3", "3"]
    # answers that differ get the punctuation step only: "two." -> "two", "2 " stays "2 "; the prediction "2"
    # matches only "2": one annotator, 0 when left out, 1/3 otherwise
    assert vqa_accuracy("2", answers) == pytest.approx(0.9 * (1 / 3))
    assert vqa_accuracy("The three.", answers) == pytest.approx(1.0)  # "3": 5 matches, >= 4 in every subset
    assert vqa_accuracy("two", answers) == pytest.approx(0.3)  # "2"; the answers "Two", "two." stay words
    assert vqa_accuracy("Unanswerable", ["unanswerable"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("dog", ["Dog"] * 10) == 0.0  # identical answers are not normalised at all
    assert vqa_accuracy("dog", ["Dog!"] * 9 + ["dog"]) == pytest.approx(0.3)  # "Dog!" -> "Dog": only "dog" matches


def test_vqa_accuracy_single_answer_and_errors():
    assert vqa_accuracy("Red.", ["red"]) == 0.0  # no other annotator to agree: the script gives 0
    assert vqa_accuracy("red", ["red"] * 4) == 1.0
    with pytest.raises(ValueError):
        vqa_accuracy("red", [])


def test_vizwiz_accuracy_compares_with_the_answers_as_released():
    # the example: "the dog"/"a dog" are not normalised to "dog" in VizWiz's evaluation
    assert vizwiz_accuracy("dog", ["the dog"] * 3 + ["a dog"] * 3 + ["cat"] * 4) == 0.0
    assert vizwiz_accuracy("The Dog.", ["dog"] * 4 + ["cat"] * 6) == pytest.approx(1.0)
    assert vizwiz_accuracy("dont", ["don\u2019t"] * 3 + ["don't"] * 7) == pytest.approx(0.9)  # typographic table
    assert normalize_vizwiz_answer("Whats that") == "what\u2019s that"
    assert vizwiz_predicts_unanswerable("Unanswerable.") and not vizwiz_predicts_unanswerable("unanswerable car")


def test_vizwiz_per_type_and_unanswerability_by_hand():
    assert vizwiz_accuracy_by_answer_type([1.0, 0.0, 0.5], ["other", "number", "other"]) == {
        "other": 0.75, "number": 0.0}
    # unanswerable = 1 - answerable; score = 1 - predicted answerable
    # labels (1, 0, 1, 0), scores (1, 1, 0, 0): at threshold 1, tp 1 fp 1 (P 1/2, R 1/2); at 0, tp 2 fp 2 (P 1/2, R 1)
    result = vizwiz_unanswerability([0, 1, 0, 1], [0.0, 0.0, 1.0, 1.0])
    assert result == {"average_precision": pytest.approx(0.5), "f1_score": pytest.approx(0.5)}
    perfect = vizwiz_unanswerability([0, 1, 1], [0.0, 1.0, 1.0])
    assert perfect == {"average_precision": 1.0, "f1_score": 1.0}
    assert vizwiz_unanswerability([1, 1], [1.0, 0.0]) == {"average_precision": 0.0, "f1_score": 0.0}
    with pytest.raises(ValueError, match="answerable"):
        vizwiz_unanswerability([2], [1.0])


def test_mmbench_video_means_dimensions_and_correct_share():
    scores = [3, 2, -1, 0, 7]
    assert mmbench_video_mean_scores(scores) == {"all": pytest.approx(12 / 5), "valid": pytest.approx(12 / 4)}
    ratings = mmbench_video_dimension_ratings(
        scores, [["OCR"], ["OCR", "Hallucination"], ["Causal Reasoning"], ["Video Topic"], ["Counting"]])
    assert ratings["fine_all"]["OCR"] == pytest.approx(2.5)
    assert ratings["coarse_all"]["FP-S"] == pytest.approx((3 + 2 + 7) / 3)
    assert ratings["coarse_valid"]["Reasoning"] != ratings["coarse_valid"]["Reasoning"]  # NaN: only a -1
    assert ratings["coarse_all"]["Reasoning"] == 0.0
    assert ratings["coarse_all"]["Perception"] == pytest.approx(12 / 4)
    assert math.isnan(ratings["fine_all"]["Social Relation"])
    assert set(ratings["coarse_all"]) == set(MMBENCH_VIDEO_DIMENSIONS) and len(ratings["fine_all"]) == 26
    with pytest.raises(ValueError, match="question 0: unknown MMBench-Video dimension"):
        mmbench_video_dimension_ratings([1], [["Smell"]])
    assert judged_correct_share(scores) == pytest.approx(3 / 5)  # 3, 2 and 7 are >= 2
    assert judged_correct_share(scores, threshold=3) == pytest.approx(2 / 5)


def test_paper_percentages_imply_sample_sizes_and_intervals():
    assert implied_sample_size(42.86) == (7, 3)  # 3/7 = 42.857...; 9/21 comes later
    assert (21, 9) in implied_sample_sizes(42.86) and (23, 14) in implied_sample_sizes(60.87)
    assert implied_sample_size(52.38) == (21, 11)
    assert implied_sample_size(69.57) == (23, 16)
    assert implied_sample_size(100.0) == (1, 1)
    assert implied_sample_size(33.3333, decimals=4) == (3, 1)
    assert implied_sample_size(0.01, max_n=100) is None
    # Wilson 95% for 1/2: centre 1/2, half width z/(1 + z^2/2) * sqrt(1/8 + z^2/16)
    z = 1.959963984540054
    half = z / (1 + z * z / 2) * math.sqrt(1 / 8 + z * z / 16)
    assert binomial_interval(1, 2) == pytest.approx((0.5 - half, 0.5 + half))
    # Clopper-Pearson with k = 0: upper = 1 - (alpha/2)^(1/n); symmetric for k = n
    assert binomial_interval(0, 10, method="exact") == pytest.approx((0.0, 1 - 0.025 ** 0.1))
    assert binomial_interval(10, 10, method="exact") == pytest.approx((0.025 ** 0.1, 1.0))
    low, high = binomial_interval(14, 23, method="exact")
    assert low < 14 / 23 < high and binomial_interval(14, 23, method="wilson")[1] < high  # exact is wider
    interval = paper_percentage_interval(60.87)
    assert interval["n"] == 23 and interval["k"] == 14 and interval["low"] < 60.87 < interval["high"]
    with pytest.raises(ValueError, match="method"):
        binomial_interval(1, 2, method="normal")


def test_vqa_correct():
    assert vqa_correct("yes", ["yes"] * 3 + ["no"] * 7)  # 3 annotators: full credit
    assert not vqa_correct("yes", ["Yes"] * 2 + ["no"] * 8)
    assert vqa_correct("Red.", ["red"])  # fewer than 3 answers: all of them must agree
    assert not vqa_correct("red", ["red", "blue"])


@pytest.mark.parametrize(
    ("text", "n_choices", "index"),
    [
        ("A", 4, 0),
        ("C", 3, 2),
        (" B\n", 2, None),  # taken as given, as LLaVA's parser does (generation strips replies first)
        ("D. The answer is A.", 3, None),  # the "X. " branch takes D, outside three options: failed
        ("F. The answer is A.", 6, 0),  # F is not one of LLaVA's A-E: the regex branch
        ("F", 6, None),  # LLaVA's options stop at E
        ("B. a cat", 3, 1),
        ("The answer is C.", 4, 2),
        ("I think The answer is B, clearly", 4, 1),
        ("The answer is B", 4, None),  # LLaVA's regex needs a character after the letter
        ("The answer is A. The answer is B.", 4, None),  # more than one match
        ("D", 3, None),  # outside the options
        ("E. something", 4, None),
        ("a", 4, None),  # lower case is not a letter option
        ("AB", 4, None),
        ("", 4, None),
        ("cat", 2, None),
    ],
)
def test_parse_option_letter(text, n_choices, index):
    assert parse_option_letter(text, n_choices) == index


def test_parse_option_letter_rejects_bad_choice_count():
    with pytest.raises(ValueError):
        parse_option_letter("A", 0)


def test_exact_match():
    assert exact_match("Red.", ["red"]) == 1.0
    assert exact_match("the circle", ["square", "Circle"]) == 1.0
    assert exact_match("red car", ["red"]) == 0.0


def test_effective_rank_hand_cases():
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)  # four equal singular values
    assert effective_rank(np.ones((3, 5))) == pytest.approx(1.0)  # rank one
    # singular values 3 and 1: p = (3/4, 1/4), H = -(3/4 ln 3/4 + 1/4 ln 1/4)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(expected)
    # uncentered: a constant offset makes rank one, not zero
    assert effective_rank(torch.full((6, 3), 2.0, dtype=torch.bfloat16)) == pytest.approx(1.0)
    # invariant to an orthogonal rotation of the feature space
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    x = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    assert effective_rank(x @ q) == pytest.approx(effective_rank(x))


def test_effective_rank_errors():
    for bad in (torch.zeros(3, 4), torch.ones(4), torch.empty(0, 4), torch.tensor([[float("nan"), 1.0]])):
        with pytest.raises(ValueError):
            effective_rank(bad)


def test_modality_dominance_hand_cases():
    # A_T = 0.6 over 10 text tokens, A_O = 0.2 over 100 visual tokens:
    # MDI = 0.06 / 0.002 = 30; P_T = 0.75, Q_T = 10/110, AEI = 0.75 * 11 = 8.25
    mdi, aei = modality_dominance(0.6, 10, 0.2, 100)
    assert mdi == pytest.approx(30.0)
    assert aei == pytest.approx(8.25)
    # attention proportional to token counts: balanced
    assert modality_dominance(0.1, 1, 0.5, 5) == pytest.approx((1.0, 1.0))
    # visual dominance goes below 1
    mdi, aei = modality_dominance(0.1, 5, 0.4, 5)
    assert (mdi, aei) == pytest.approx((0.25, 0.4))
    assert modality_dominance(0.5, 2, 0.0, 3) == (math.inf, pytest.approx(2.5))


def test_modality_dominance_errors():
    for args in ((0.5, 0, 0.5, 3), (0.5, 3, 0.5, 0), (-0.1, 3, 0.5, 3), (0.0, 3, 0.0, 3), (math.nan, 3, 0.5, 3)):
        with pytest.raises(ValueError):
            modality_dominance(*args)


def test_layer_groups():
    assert layer_groups(6) == {"all": [0, 1, 2, 3, 4, 5], "early": [0, 1], "middle": [2, 3], "late": [4, 5]}
    groups = layer_groups(32)
    assert [len(groups[name]) for name in ("early", "middle", "late")] == [11, 11, 10]
    assert groups["early"] + groups["middle"] + groups["late"] == groups["all"]
    assert layer_groups(2) == {"all": [0, 1], "early": [0], "middle": [1], "late": []}
    with pytest.raises(ValueError):
        layer_groups(0)


def test_unchanged_rate():
    assert unchanged_rate(["yes", "no", "2", "red"], ["yes", "yes", "2", "blue"]) == pytest.approx(50.0)
    assert unchanged_rate(["Yes.", "two"], ["yes", "2"]) == pytest.approx(100.0)  # normalised by default
    assert unchanged_rate(["Yes.", "two"], ["yes", "2"], normalize=False) == pytest.approx(0.0)
    assert unchanged_rate(["a"], ["a"]) == 100.0
    with pytest.raises(ValueError):
        unchanged_rate(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        unchanged_rate([], [])


def test_vision_split_and_robustness_summary():
    split = vision_irrelevant_split({"q1": True, "q2": False, "q3": False, "q4": True})
    assert split == {
        "q1": "vision_irrelevant", "q2": "vision_dependent", "q3": "vision_dependent", "q4": "vision_irrelevant"
    }
    clean = {"q1": "A", "q2": "B", "q3": "yes", "q4": "C"}
    noisy = {"q1": "A", "q2": "A", "q3": "yes", "q4": "D"}
    summary = robustness_summary(clean, noisy, split)
    assert summary["all"] == {"unchanged_rate": pytest.approx(50.0), "n": 4}
    assert summary["vision_dependent"] == {"unchanged_rate": pytest.approx(50.0), "n": 2}  # q3 kept, q2 changed
    assert summary["vision_irrelevant"] == {"unchanged_rate": pytest.approx(50.0), "n": 2}  # q1 kept, q4 changed
    only_dependent = robustness_summary({"q2": "x"}, {"q2": "x"}, split)
    assert only_dependent["vision_irrelevant"] == {"unchanged_rate": None, "n": 0}
    with pytest.raises(ValueError, match="missing from the vision split"):
        robustness_summary({"q9": "x"}, {"q9": "x"}, split)
    with pytest.raises(ValueError, match="different examples"):
        robustness_summary({"q1": "x"}, {"q2": "x"}, split)


# ---------------------------------------------------------------------------------------------- statistics

from moir.metrics.reliance import follows_hint, hint_label, hint_reliance, hinted_answer  # noqa: E402
from moir.metrics.stats import (  # noqa: E402
    average_ranks,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    spearman,
    spearman_bootstrap,
)


def test_paired_bootstrap_on_hand_computed_cases():
    # identical arms: no difference in any resample; a constant difference: the interval is that difference
    same = paired_bootstrap([[1, 0, 1]], [[1, 0, 1]], n_resamples=200)
    assert (same["mean_diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    constant = paired_bootstrap(np.ones((2, 5)), np.zeros((2, 5)), n_resamples=200)
    assert (constant["mean_diff"], constant["low"], constant["high"]) == (1.0, 1.0, 1.0)
    # two questions with differences 1 and 0: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are 0 and 1 (question level) ...
    two = paired_bootstrap([1, 0], [0, 0], n_resamples=4000, seed=3)
    assert (two["mean_diff"], two["low"], two["high"], two["n_seeds"], two["n_questions"]) == (0.5, 0.0, 1.0, 1, 2)
    # ... and the same with two seeds of one question (seed level)
    seeds = paired_bootstrap([[1], [0]], [[0], [0]], n_resamples=4000, seed=3)
    assert (seeds["mean_diff"], seeds["low"], seeds["high"]) == (0.5, 0.0, 1.0)
    # seeded: the same seed gives the same interval; the observed mean lies inside it
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, (3, 50)), rng.integers(0, 2, (3, 50))
    first, again = paired_bootstrap(a, b, seed=7, n_resamples=1000), paired_bootstrap(a, b, seed=7, n_resamples=1000)
    assert first == again and first["low"] <= first["mean_diff"] <= first["high"]
    assert first["mean_diff"] == pytest.approx((a - b).mean())
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap([[1, 0]], [[1, 0, 1]])


def test_mcnemar_exact_on_hand_computed_cases():
    # a right and b wrong on 5 questions, never the reverse: p = 2 * (1/2)^5
    result = mcnemar_exact([1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1])
    assert (result["a_only"], result["b_only"], result["n_pairs"]) == (5, 0, 7)
    assert result["p"] == pytest.approx(0.0625)
    # 1 vs 9 discordant pairs: p = 2 * (C(10,0) + C(10,1)) / 2^10
    a = [1] + [0] * 9 + [1, 0]
    b = [0] + [1] * 9 + [1, 0]
    assert mcnemar_exact(a, b)["p"] == pytest.approx(2 * 11 / 1024)
    # balanced discordance and no discordance: p = 1; seeds are pooled by stacking their pairs
    assert mcnemar_exact([1, 0], [0, 1])["p"] == 1.0 and mcnemar_exact([1, 1], [1, 1])["p"] == 1.0
    stacked = mcnemar_exact([[1, 1, 1], [1, 1, 0]], [[0, 0, 0], [0, 0, 0]])
    assert (stacked["a_only"], stacked["n_pairs"], stacked["p"]) == (5, 6, pytest.approx(0.0625))
    # thousands of pairs: exact integers, no overflow
    assert 0 < mcnemar_exact([1] * 1200 + [0] * 1000, [0] * 1200 + [1] * 1000)["p"] < 1e-4
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1])


def test_holm_on_a_hand_computed_family():
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 0.5), back in input order
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])  # monotone, capped at 1
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([float("nan")])


def test_spearman_and_its_bootstrap_interval():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert spearman([1, 2, 3], [5, 6, 9]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))  # 0.8
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    perfect = spearman_bootstrap([1, 2, 3], [2, 4, 6], n_resamples=300)
    assert perfect["rho"] == pytest.approx(1.0) and perfect["low"] == pytest.approx(1.0)
    assert perfect["n_degenerate"] > 0  # a resample of one pair repeated (1 in 9) has no correlation: left out
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    noisy = spearman_bootstrap(x, y, n_resamples=500, seed=2)
    assert noisy["low"] <= noisy["rho"] <= noisy["high"] < 1 and noisy == spearman_bootstrap(x, y, n_resamples=500,
                                                                                          seed=2)
    assert noisy["rho"] == pytest.approx(spearman(x, y)) and noisy["rho"] > 0.3
    few = spearman_bootstrap([1, 2], [2, 1], n_resamples=10)
    assert few["rho"] == pytest.approx(-1.0) and math.isnan(few["low"])


# ---------------------------------------------------------------------------------------------- hint reliance


def test_hint_reliance_on_hand_made_questions():
    from moir.data.synthetic import HINT_TEMPLATES

    assert [hinted_answer(template.format("red")) for template in HINT_TEMPLATES] == ["red"] * len(HINT_TEMPLATES)
    assert (hint_label("colour:hint-right"), hint_label("count:hint-wrong"), hint_label(""), hint_label("x")) == (
        True, False, None, None)
    assert follows_hint(["red", "blue"], "B", "blue") and not follows_hint(["red", "blue"], "A", "blue")
    assert not follows_hint(["red", "blue"], "no letter", "blue")
    assert hinted_answer("The caption says B.") == "B" and follows_hint(["red", "blue"], "B", "B")
    assert not follows_hint(["red", "blue"], "A", "B")
    assert follows_hint([], "Blue.", "blue") and not follows_hint([], "red", "blue")
    # 2 hint-right (1 correct), 3 hint-wrong (1 correct, 2 answered with the hint), 1 without a hint
    result = hint_reliance([True, True, False, False, False, None], [True, False, True, False, False, True],
                           [False, False, False, True, True, True])
    assert result == {"acc_hint_right": 50.0, "acc_hint_wrong": pytest.approx(100 / 3),
                      "hint_follow": pytest.approx(200 / 3), "n_hint_right": 2, "n_hint_wrong": 3}
    assert hint_reliance([None], [True], [False])["acc_hint_right"] is None


def test_base_reading_per_question_type_and_hint_outcome():
    rows = [
        {"id": "a", "category": "colour:hint-right", "protocol": "multiple_choice", "correct": True},
        {"id": "b", "category": "colour:hint-wrong", "protocol": "multiple_choice", "correct": False},
        {"id": "c", "category": "colour:hint-wrong", "protocol": "multiple_choice", "correct": True},
        {"id": "d", "category": "colour:hint-wrong", "protocol": "short_answer", "correct": True},
        {"id": "e", "category": "start colour:hint-right", "protocol": "short_answer", "correct": False},
    ]
    assert base_reading(rows) == [
        {"question_type": "colour", "protocol": "multiple_choice", "n": 3, "n_hint_right": 1, "acc_hint_right": 100.0,
         "n_hint_wrong": 2, "acc_hint_wrong": 50.0},
        {"question_type": "colour", "protocol": "short_answer", "n": 1, "n_hint_right": 0, "acc_hint_right": None,
         "n_hint_wrong": 1, "acc_hint_wrong": 100.0},
        {"question_type": "start colour", "protocol": "short_answer", "n": 1, "n_hint_right": 1,
         "acc_hint_right": 0.0, "n_hint_wrong": 0, "acc_hint_wrong": None},
    ]
    merged = base_reading(rows[:4], by_protocol=False)
    assert merged == [{"question_type": "colour", "protocol": "all", "n": 4, "n_hint_right": 1,
                       "acc_hint_right": 100.0, "n_hint_wrong": 3, "acc_hint_wrong": pytest.approx(200 / 3)}]
    with pytest.raises(ValueError, match="prediction x: category 'biology'"):
        base_reading([{"id": "x", "category": "biology", "protocol": "multiple_choice", "correct": True}])
