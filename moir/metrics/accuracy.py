"""Answer scoring by each benchmark's reference protocol, as its official evaluation code computes it.

Each function below is tested against the official code's outputs on hundreds of hand-picked and random inputs
(tests/test_official_protocols.py; the fixtures under tests/fixtures/official/ name the code and its commit).

- VQA answer normalisation (`normalize_answer`) follows the official VQA evaluation script (GT-Vision-Lab/VQA,
  `vqaEval.py`): newlines and tabs become spaces, punctuation is stripped or replaced by a space
  (`_process_punctuation`), words are lower-cased, number words become digits, articles are dropped and
  apostrophe-less contractions get their apostrophe back (`_process_digit_article`). The script's quirks are kept
  on purpose so that our numbers match the evaluation server's: the period regex `(?!<=\\d)(\\.)(?!\\d)` (which
  removes every period not followed by a digit) and the `re.UNICODE` flag passed where `re.sub` expects its
  `count` (so at most 32 periods are removed).
- VQA v2 accuracy (`vqa_accuracy`) is that script's: the prediction is normalised in full; the annotators'
  answers only get the punctuation step, and only when they are not all identical; then, for each annotator,
  min(#matches among the other annotators / 3, 1), averaged over the annotators (with 10 answers: the 10
  leave-one-out subsets). A single reference answer leaves no other annotator, so it scores 0.
- VizWiz accuracy (`vizwiz_accuracy`) is the official VizWiz `VQAEval` (Qing Li): the prediction is normalised
  (punctuation, then digits/articles with VizWiz's contraction table, whose apostrophes are mostly the
  typographic one, U+2019) and compared with the annotators' answers exactly as released; same leave-one-out
  average. VizWiz also reports accuracy per answer type (`vizwiz_accuracy_by_answer_type`) and how well
  unanswerable questions are recognised (`vizwiz_unanswerability`: sklearn's average precision and F1 with
  "unanswerable" as the positive class, here computed without sklearn).
- ScienceQA option parsing (`parse_option_letter`) is LLaVA-1.5's `llava/eval/eval_science_qa.py`: the reply is
  exactly one of the letters A-E, or starts with "X. " for a letter X in A-E, or else contains exactly one match
  of `The answer is ([A-Z]).`; the letter must then be among the question's options, or the parse fails (LLaVA
  counts a failed parse wrong). The reply is taken as given: LLaVA's generation strips it, and so does ours
  (`VLMWrapper.generate`).
- A VQA prediction is "correct" (for the vision-irrelevant split) when it gets full credit by the VQA definition,
  min(#humans who gave it / 3, 1) = 1 (`vqa_correct`).
- The synthetic benchmark's open questions are scored by exact match of the normalised answer (`exact_match`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from moir.prompts import OPTION_LETTERS

# The official table. Keys are looked up after lower-casing, so the table's capitalised keys ("Im", "Ive",
# "Id've", "I'dve") can never match and are left out here; the behaviour is identical.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"
)


def _process_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)  # sic: the official script passes the flag as `count`


def _process_digit_article(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation (see the module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def _leave_one_out_accuracy(predicted: str, answers: Sequence[str]) -> float:
    """Mean over the annotators of min(#other annotators whose answer equals `predicted` / 3, 1)."""
    matches = [answer == predicted for answer in answers]
    total = sum(matches)
    return sum(min((total - match) / 3, 1.0) for match in matches) / len(matches)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA v2 accuracy of one prediction against the annotators' answers, in [0, 1], as GT-Vision-Lab's
    `vqaEval.py` computes it: the prediction fully normalised, the answers punctuation-processed only when they
    are not all identical, then the leave-one-out mean of min(matches/3, 1)."""
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    predicted = normalize_answer(prediction)
    if len(set(answers)) > 1:
        answers = [_process_punctuation(answer) for answer in answers]
    return _leave_one_out_accuracy(predicted, answers)


def vqa_correct(prediction: str, answers: Sequence[str]) -> bool:
    """Whether a prediction is fully correct by the VQA definition: at least 3 annotators (all, when fewer than 3
    answers exist) gave it, so min(#humans/3, 1) = 1. With 10 answers this is vqa_accuracy >= 0.9."""
    if len(answers) == 0:
        raise ValueError("vqa_correct needs at least one reference answer")
    predicted = normalize_answer(prediction)
    return sum(normalize_answer(answer) == predicted for answer in answers) >= min(3, len(answers))


_LLAVA_OPTIONS = "ABCDE"  # eval_science_qa.py's --options default
_LLAVA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_option_letter(text: str, n_choices: int) -> int | None:
    """The index of the option a reply chooses, parsed exactly as LLaVA-1.5's ScienceQA evaluation does; None
    when LLaVA's parse fails (no letter found, or a letter outside the question's options)."""
    if not 1 <= n_choices <= len(OPTION_LETTERS):
        raise ValueError(f"n_choices must be in 1..{len(OPTION_LETTERS)}, got {n_choices}")
    if text in _LLAVA_OPTIONS and len(text) == 1:
        letter = text
    elif len(text) >= 3 and text[0] in _LLAVA_OPTIONS and text[1:3] == ". ":
        letter = text[0]  # any letter A-E is taken here, even one beyond the question's options
    else:
        found = _LLAVA_ANSWER_IS.findall(text)
        if len(found) != 1:
            return None
        letter = found[0]
    valid = _LLAVA_OPTIONS[:n_choices]
    return valid.index(letter) if letter in valid else None


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals one of the normalised reference answers, else 0.0."""
    if len(answers) == 0:
        raise ValueError("exact_match needs at least one reference answer")
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == predicted for answer in answers))
