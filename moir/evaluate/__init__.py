"""Evaluation of a trained run or a base model (`python -m moir.evaluate`, see `evaluation.py`), by concern:

    evaluation.py   the orchestration and the command line: load, predict, score, write
    noise.py        the inputs of each mode (clean, noise, no-image): seeded Gaussian noise images and frames
    analysis.py     the teacher-forced pass: attention masses (MDI/AEI) and effective ranks, and their summaries
    scoring.py      predictions scored by each benchmark's protocol, the judge's wiring, accuracy and robustness
    store.py        the files: schemas, the resumable part store, reading finished evaluations back
    attention.py    recording the attention mass of groups of tokens in the decoder layers
    judge.py        the MMBench-Video judge (an OpenAI-compatible endpoint or a local model)
"""


class EvaluationError(RuntimeError):
    """A bad input or setting; the message names the file and the field."""
