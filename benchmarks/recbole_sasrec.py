"""RecBole 1.2.1's SASRec on a leave-last-out split given as files: the public baseline's top-20 lists.

    .venv/bin/python benchmarks/recbole_sasrec.py --split-dir SPLIT      # summary JSON on stdout
    from benchmarks.recbole_sasrec import sasrec_top20                    # the full result

RecBole 1.2.1 needs numpy < 2, so it cannot share the project's venv (numpy 2). It lives in a venv of
its own, `.venv-recbole/` beside `.venv/`, built on first use (one to two minutes; pip's output goes
to stderr). The caller's side of this module (`sasrec_top20`) uses only the standard library: it
hashes the split, answers from the cache when it can, and otherwise runs this same file with
`.venv-recbole/bin/python ... --worker tune|refit`. The workers' stdout is sent to stderr, so a caller
that prints JSON on stdout keeps it clean; each worker writes its result to a file.

The split (`split_dir`, all integer codes, tab-separated with a header):

- `validation_train.tsv` (user, item, position): every user's held-in items minus the validation item.
- `validation_targets.tsv` (user, item): the validation item of each scored user.
- `test_train.tsv` (user, item, position): every user's held-in items (the validation item included).
- `test_targets.tsv` (user, item): the test item of each scored user, the same users in the same order.
- `n_items.txt`: the catalog size; items are 0..n-1, some maybe never in training.

The protocol mirrors how Vitrine itself is tuned and refit:

1. tune, one worker per dropout of the grid, side by side: RecBole's SASRec with its default
   full-softmax cross-entropy loss trains on RecBole's own examples of `validation_train` (every
   prefix of every sequence, the last MAX_ITEM_LIST_LENGTH items of it, predicts the next item).
   After each epoch it ranks the full catalog for the scored users (their training items excluded)
   and scores Recall@10 and NDCG@10 of the validation targets; it stops after PATIENCE epochs
   without a better NDCG@10 and keeps the best epoch's model. That model then ranks for the test
   from each user's `test_train` sequence: "before refit".
2. The setting with the best validation NDCG@10 wins.
3. refit: a fresh model of that setting trains on `test_train` for exactly its best epoch count and
   ranks for the test the same way: "refit".

Example:
    result = sasrec_top20(Path("split"), Path(".cache/recbole"))
    result["validation"]          # {"recall@10": 0.09.., "ndcg@10": 0.05..}
    result["top20_refit"][0]      # 20 item codes for the first user of test_targets.tsv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-recbole"
VENV_PYTHON = VENV / "bin" / "python"
# Written after a complete install; a venv without it (an interrupted build) is built again.
VENV_STAMP = VENV / ".vitrine-requirements"
RECBOLE_VERSION = "1.2.1"
# RecBole 1.2.1 uses numpy aliases that numpy 2 removed, hence numpy 1.26 and a pandas built for it;
# setuptools < 81 still ships pkg_resources, which RecBole's dependencies import. torch is the
# project's own version (its CPU wheel is served from the local wheel folder).
REQUIREMENTS = (f"recbole=={RECBOLE_VERSION}", "torch==2.13.0", "numpy==1.26.4", "pandas==2.2.3", "setuptools<81")
# Part of the cache key: bump it whenever a change here changes the lists.
RUNNER_VERSION = "sasrec-runner-2"
DEFAULT_CACHE = REPO / ".cache" / "recbole"
SPLIT_FILES = ("validation_train.tsv", "validation_targets.tsv", "test_train.tsv", "test_targets.tsv")

# Lists handed back per user, and the cut-off the validation score reads (the benchmark's headline).
TOP_K = 20
EVAL_K = 10
# Epochs without a better validation NDCG@10 before tuning stops: RecBole's 10 doubles the tail,
# and SASRec's validation curve is smooth enough that 5 flat epochs mark its peak.
PATIENCE = 5
# Upper bound of epochs per setting, far above where the peak comes (26 epochs for a reference
# SASRec on Toys), so only a run that keeps improving meets it.
MAX_EPOCHS = 100
# The grid, tried on validation only: RecBole's default dropout (0.5) and the SASRec paper's 0.2.
DROPOUT_GRID = (0.2, 0.5)
# MAX_ITEM_LIST_LENGTH is this percentile of the validation-training sequence lengths, capped at
# RecBole's default (50): Toys' users have 8.6 items on average, and a window of 50 (mostly padding)
# made one epoch 649 s on two cores; a window holding 95% of the users whole loses only the oldest
# items of the long tail.
MAX_LEN_PERCENTILE = 95
MAX_LEN_CAP = 50
# Examples per step. RecBole's default (2048) gives Toys only ~54 Adam steps an epoch and needs many
# more epochs; an epoch costs about the same either way (measured 64 s at 2048 vs 80 s at 512 on
# Toys), so the smaller batch reaches the peak sooner.
TRAIN_BATCH_SIZE = 512
# Batches are cut from runs of this many batches' worth of shuffled examples sorted by length, and
# each batch is trimmed to its longest sequence: RecBole pads every example to the full window (a
# third of Toys' padded slots hold an item), and attention and the feed-forward layers pay for
# padding. Trimming trailing padding does not change SASRec's output (it attends causally, to
# items only, and reads the last item's position).
SORT_CHUNK_BATCHES = 50
# Users ranked per forward pass: [PREDICT_BATCH, n_items] float scores stay small.
PREDICT_BATCH = 1024
# RecBole's defaults for SASRec and its optimiser (Adam, no weight decay).
LEARNING_RATE = 0.001
N_LAYERS, N_HEADS, HIDDEN_SIZE, INNER_SIZE = 2, 2, 64, 256
SEED = 2020
# Grid settings trained at once, one process each: the machine's two cores.
PARALLEL_WORKERS = 2
# torch threads per worker. Its intra-op threads scale badly on SASRec's small ops: on this
# 2-core machine shared with other jobs a batch of 512 took 1.54 s with 2 threads, 0.34 s with 1.
THREADS = 1
# Name of the RecBole dataset (the atomic files' stem).
DATASET = "vitrine"


def sasrec_top20(
    split_dir: Path,
    cache_dir: Path,
    *,
    max_epochs: int = MAX_EPOCHS,
    show_progress: bool = True,
    dropouts: tuple[float, ...] = DROPOUT_GRID,
    threads: int = THREADS,
) -> dict:
    """SASRec's top-20 lists for the split's scored users, trained before the validation item and refit.

    Args:
        split_dir: the five split files (see the module docstring).
        cache_dir: where results are cached (`sasrec-<key>.json`), and RecBole's atomic files are
            written while it runs (a temporary folder, removed afterwards).
        max_epochs: most epochs per grid setting while tuning on validation.
        show_progress: one line per epoch (and pip's output, if the venv is built) on stderr.
        dropouts: the grid (hidden and attention dropout together), chosen on validation NDCG@10.
        threads: torch threads per worker (not part of the cache key).

    Returns:
        settings (the chosen hyper-parameters; `epochs` is the best epoch count), validation
        (recall@10 and ndcg@10 of that setting's best epoch), top20_before_refit and top20_refit (one
        list of item codes per row of test_targets.tsv, history excluded, -1 only past the items left
        to rank), grid (each setting's validation curve), seconds, recbole_version, key.

    Example:
        result = sasrec_top20(Path("split"), Path(".cache/recbole"), show_progress=False)
    """
    split_dir, cache_dir = Path(split_dir).resolve(), Path(cache_dir)
    if max_epochs < 1 or not dropouts:
        raise ValueError("sasrec_top20 needs max_epochs >= 1 and at least one dropout")
    grid = {"dropout": [float(d) for d in dropouts], "max_epochs": int(max_epochs), "patience": PATIENCE,
            "train_batch_size": TRAIN_BATCH_SIZE, "learning_rate": LEARNING_RATE, "seed": SEED}
    key = split_key(split_dir, grid)
    cached = cache_dir / f"sasrec-{key[:16]}.json"
    if cached.exists():
        result = json.loads(cached.read_text())
        if result.get("key") == key:
            return result
    started = time.perf_counter()
    venv_seconds = ensure_venv(show_progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=cache_dir))
    try:
        common = ["--split-dir", str(split_dir), "--threads", str(threads)] + ([] if show_progress else ["--quiet"])
        tuned_at = time.perf_counter()
        outs = [work / f"tune-{i}.json" for i in range(len(dropouts))]
        _run_workers([["tune", "--dropout", str(d), "--max-epochs", str(max_epochs), "--out", str(out), *common]
                      for d, out in zip(dropouts, outs)], work)
        tuned = [json.loads(out.read_text()) for out in outs]
        tune_seconds = time.perf_counter() - tuned_at
        best = max(tuned, key=lambda t: t["ndcg@10"])  # the first of equals: the grid's order
        refit_at = time.perf_counter()
        refit_out = work / "refit.json"
        _run_workers([["refit", "--dropout", str(best["dropout"]), "--epochs", str(best["epochs"]),
                       "--out", str(refit_out), *common]], work)
        refit = json.loads(refit_out.read_text())
        refit_seconds = time.perf_counter() - refit_at
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = {"model": "SASRec", "loss_type": "CE", "n_layers": N_LAYERS, "n_heads": N_HEADS,
                "hidden_size": HIDDEN_SIZE, "inner_size": INNER_SIZE, "hidden_dropout_prob": best["dropout"],
                "attn_dropout_prob": best["dropout"], "max_item_list_length": best["max_item_list_length"],
                "train_batch_size": TRAIN_BATCH_SIZE, "learning_rate": LEARNING_RATE, "epochs": best["epochs"],
                "max_epochs": max_epochs, "patience": PATIENCE, "seed": SEED, "grid": {"dropout": list(dropouts)}}
    result = {
        "settings": settings,
        "validation": {"recall@10": best["recall@10"], "ndcg@10": best["ndcg@10"]},
        "top20_before_refit": best["top20_before_refit"],
        "top20_refit": refit["top20_refit"],
        "grid": [{k: v for k, v in t.items() if k != "top20_before_refit"} for t in tuned],
        "seconds": {"venv_build": round(venv_seconds, 1), "tune": round(tune_seconds, 1),
                    "per_epoch": {str(t["dropout"]): t["seconds_per_epoch"] for t in tuned},
                    "refit": round(refit_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "recbole_version": refit["recbole_version"],
        "key": key,
    }
    cached.write_text(json.dumps(result))
    return result


def split_key(split_dir: Path, grid: dict[str, Any]) -> str:
    """sha256 of the split's contents, the catalog size, the grid, RUNNER_VERSION and RecBole's version.

    The files are hashed as parsed integer rows (training rows sorted, targets in their order), so
    the same split written with another column order, line ending or row order hits the same cache.

    Example:
        split_key(Path("split"), {"dropout": [0.2, 0.5]})   # "3f9c..."
    """
    digest = hashlib.sha256()
    for name in SPLIT_FILES:
        training = name.endswith("_train.tsv")
        columns = ("user", "item", "position") if training else ("user", "item")
        with (split_dir / name).open(newline="") as f:
            rows = [tuple(int(row[c]) for c in columns) for row in csv.DictReader(f, delimiter="\t")]
        if training:
            rows.sort()
        digest.update(f"{name}\n".encode())
        digest.update("\n".join(",".join(map(str, r)) for r in rows).encode())
    digest.update(f"\nn_items={read_n_items(split_dir)}\n".encode())
    digest.update(json.dumps(grid, sort_keys=True).encode())
    digest.update(f"\n{RUNNER_VERSION}\n{RECBOLE_VERSION}".encode())
    return digest.hexdigest()


def read_n_items(split_dir: Path) -> int:
    return int((split_dir / "n_items.txt").read_text().strip())


def ensure_venv(show_progress: bool = True) -> float:
    """Build `.venv-recbole` unless a complete one is there; the seconds it took (0 if none).

    Commands (pip's output on stderr):
        python3.11 -m venv --clear .venv-recbole
        .venv-recbole/bin/python -m pip install recbole==1.2.1 torch==2.13.0 numpy==1.26.4 pandas==2.2.3 'setuptools<81'
    """
    wanted = "\n".join(REQUIREMENTS)
    if VENV_PYTHON.exists() and VENV_STAMP.exists() and VENV_STAMP.read_text() == wanted:
        return 0.0
    print(f"recbole_sasrec: building {VENV} for RecBole {RECBOLE_VERSION} (it needs numpy<2; a minute or two)",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    python = shutil.which("python3.11") or sys.executable
    quiet = [] if show_progress else ["--quiet"]
    subprocess.run([python, "-m", "venv", "--clear", str(VENV)], check=True, stdout=2)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", *quiet, *REQUIREMENTS], check=True, stdout=2)
    VENV_STAMP.write_text(wanted)
    seconds = time.perf_counter() - started
    print(f"recbole_sasrec: {VENV} built in {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds


def _run_workers(arguments: list[list[str]], work: Path) -> None:
    """Run `--worker ARGS...` in .venv-recbole, PARALLEL_WORKERS at a time; raise if one fails.

    Their stdout joins our stderr (fd 2): RecBole and torch may print, the caller's stdout is JSON.
    They run in `work`, so whatever RecBole writes relative to its working directory goes with it.
    """
    pending = list(arguments)
    running: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    try:
        while pending or running:
            while pending and len(running) < PARALLEL_WORKERS:
                command = [str(VENV_PYTHON), str(Path(__file__).resolve()), "--worker", *pending.pop(0),
                           "--work-dir", str(work)]
                running.append(subprocess.Popen(command, stdout=2, cwd=work, env=env))
            done = running.pop(0)
            if done.wait() != 0:
                raise RuntimeError(f"recbole_sasrec: a worker failed (exit {done.returncode}); its log is on stderr")
    finally:
        for process in running:
            process.terminate()
            process.wait()


# ---- The workers: they run inside .venv-recbole (numpy 1.26, RecBole 1.2.1). ----


def _tune_worker(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Train on validation_train with early stopping; the curve, the best epoch, its test lists."""
    import copy

    split = _Split(args.split_dir)
    data = _Data(split.frames["validation_train.tsv"], split.n_items, args.work_dir / f"tune-{args.dropout}",
                 split.max_len)
    log(f"{len(split.users)} scored users, {split.n_items} items, {data.n_examples} training examples, "
        f"MAX_ITEM_LIST_LENGTH {split.max_len}")
    inputs = data.inputs(split.users)
    targets = split.frames["validation_targets.tsv"]["item"].to_numpy()
    curve: list[dict[str, float]] = []
    best: dict[str, Any] = {"epoch": 0, "ndcg@10": -1.0, "state": None}
    started = time.perf_counter()

    def after_epoch(epoch: int, loss: float, model: Any) -> bool:
        scores = hit_metrics(data.top_k(model, inputs, EVAL_K), targets)
        curve.append({"loss": round(loss, 5), **scores, "seconds": round(time.perf_counter() - started, 1)})
        log(f"epoch {epoch}: loss {loss:.4f} recall@10 {scores['recall@10']:.4f} ndcg@10 {scores['ndcg@10']:.4f} "
            f"({curve[-1]['seconds']:.0f} s)")
        if scores["ndcg@10"] > best["ndcg@10"]:
            best.update(epoch=epoch, state=copy.deepcopy(model.state_dict()), **scores)
        return epoch - best["epoch"] < PATIENCE

    model = data.fit(args.dropout, args.max_epochs, after_epoch)
    seconds = time.perf_counter() - started
    model.load_state_dict(best["state"])
    test_inputs = data.inputs(split.users, split.frames["test_train.tsv"])
    log(f"best epoch {best['epoch']}: recall@10 {best['recall@10']:.4f} ndcg@10 {best['ndcg@10']:.4f}")
    return {"dropout": args.dropout, "epochs": best["epoch"], "epochs_run": len(curve),
            "recall@10": best["recall@10"], "ndcg@10": best["ndcg@10"], "max_item_list_length": split.max_len,
            "seconds": round(seconds, 1), "seconds_per_epoch": round(seconds / len(curve), 1), "curve": curve,
            "top20_before_refit": data.top_k(model, test_inputs, TOP_K).tolist()}


def _refit_worker(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Train a fresh model on test_train for exactly `args.epochs`; its test lists."""
    import recbole

    split = _Split(args.split_dir)
    train = split.frames["test_train.tsv"]
    data = _Data(train, split.n_items, args.work_dir / "refit", split.max_len)

    def after_epoch(epoch: int, loss: float, model: Any) -> bool:
        log(f"epoch {epoch}/{args.epochs}: loss {loss:.4f}")
        return True

    model = data.fit(args.dropout, args.epochs, after_epoch)
    top = data.top_k(model, data.inputs(split.users, train), TOP_K)
    return {"top20_refit": top.tolist(), "recbole_version": str(recbole.__version__)}


def hit_metrics(top: Any, targets: Any) -> dict[str, float]:
    """Recall@k and NDCG@k of lists `top` [users, k] against one target per user (k = top's width).

    Example:
        hit_metrics(np.array([[3, 1], [2, 0]]), np.array([1, 5]))   # {"recall@2": 0.5, "ndcg@2": 0.315..}
    """
    import numpy as np

    hits = top == np.asarray(targets)[:, None]
    found = hits.any(axis=1)
    ndcg = np.where(found, 1.0 / np.log2(hits.argmax(axis=1) + 2.0), 0.0)
    k = top.shape[1]
    return {f"recall@{k}": round(float(found.mean()), 5), f"ndcg@{k}": round(float(ndcg.mean()), 5)}


class _Split:
    """The split files read and checked; `max_len` is the window derived from the training lengths."""

    def __init__(self, split_dir: Path) -> None:
        import numpy as np
        import pandas as pd

        self.n_items = read_n_items(split_dir)
        self.frames = {name: pd.read_csv(split_dir / name, sep="\t") for name in SPLIT_FILES}
        for name, frame in self.frames.items():
            if len(frame) and (frame["item"].min() < 0 or frame["item"].max() >= self.n_items):
                raise ValueError(f"{name}: item codes must lie in 0..{self.n_items - 1}")
            if "position" in frame:
                self.frames[name] = frame.sort_values(["user", "position"], kind="stable").reset_index(drop=True)
        self.users = self.frames["test_targets.tsv"]["user"].to_numpy()
        if not np.array_equal(self.users, self.frames["validation_targets.tsv"]["user"].to_numpy()):
            raise ValueError("validation_targets.tsv and test_targets.tsv must list the same users in the same order")
        lengths = self.frames["validation_train.tsv"].groupby("user").size().to_numpy()
        self.max_len = int(min(MAX_LEN_CAP, max(1, math.ceil(np.percentile(lengths, MAX_LEN_PERCENTILE)))))


class _Data:
    """One training file as a RecBole dataset: its examples, the id maps, training and ranking.

    The interactions are written as RecBole atomic files (`vitrine.inter`: user_id:token,
    item_id:token, timestamp:float = position; `vitrine.item`: every catalog code, so items never
    met in training still get an embedding and are ranked) and read with `create_dataset`, which
    remaps tokens to internal ids (0 is padding) and builds every prefix -> next item example.
    Nothing is filtered or held out: `build()` puts every example into its training part.
    """

    def __init__(self, train: Any, n_items: int, folder: Path, max_len: int) -> None:
        import numpy as np
        from recbole.config import Config
        from recbole.data import create_dataset

        atomic = folder / DATASET
        atomic.mkdir(parents=True)
        inter = train.rename(columns={"user": "user_id:token", "item": "item_id:token", "position": "timestamp:float"})
        inter[["user_id:token", "item_id:token", "timestamp:float"]].to_csv(atomic / f"{DATASET}.inter", sep="\t",
                                                                            index=False)
        (atomic / f"{DATASET}.item").write_text("item_id:token\n" + "".join(f"{i}\n" for i in range(n_items)))
        argv, sys.argv = sys.argv, sys.argv[:1]  # Config reads `--key=value` from the command line
        try:
            self.config = Config(model="SASRec", dataset=DATASET, config_dict={
                "data_path": str(folder), "checkpoint_dir": str(folder / "saved"), "use_gpu": False,
                "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
                "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
                # The whole file trains: every user's examples go to the first of RS's three parts.
                "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"},
                "MAX_ITEM_LIST_LENGTH": max_len, "train_batch_size": TRAIN_BATCH_SIZE,
                "learning_rate": LEARNING_RATE, "loss_type": "CE", "train_neg_sample_args": None,
                "n_layers": N_LAYERS, "n_heads": N_HEADS, "hidden_size": HIDDEN_SIZE, "inner_size": INNER_SIZE,
                "seed": SEED, "reproducibility": True, "show_progress": False, "state": "WARNING", "worker": 0,
            })
        finally:
            sys.argv = argv
        self.dataset = create_dataset(self.config)
        examples = self.dataset.build()[0].inter_feat
        expected = int((train.groupby("user").size() - 1).clip(lower=0).sum())
        if len(examples) != expected:
            raise RuntimeError(f"RecBole built {len(examples)} training examples, the file gives {expected}")
        # [examples, max_len] left-aligned internal ids, [examples] their lengths and next items.
        self.seqs, self.seq_lens, self.next_items = examples["item_id_list"], examples["item_length"], examples["item_id"]
        self.n_examples, self.max_len, self.train = len(examples), max_len, train
        tokens = self.dataset.field2id_token["item_id"]
        if len(tokens) != n_items + 1:
            raise ValueError(f"RecBole sees {len(tokens) - 1} items, the catalog has {n_items}")
        # internal id -> caller's code (-1 for padding), and back.
        self.codes = np.array([-1] + [int(t) for t in tokens[1:]], dtype=np.int64)
        self.internal = np.zeros(n_items, dtype=np.int64)
        self.internal[self.codes[1:]] = np.arange(1, len(self.codes))

    def fit(self, dropout: float, epochs: int, after_epoch: Callable[[int, float, Any], bool]) -> Any:
        """A fresh SASRec (the same seed every time) trained up to `epochs`, while `after_epoch` says go on.

        Args:
            dropout: hidden and attention dropout.
            epochs: the most epochs.
            after_epoch: called with (epoch, mean loss, model) after each; False stops.
        """
        import numpy as np
        import torch
        from recbole.data.interaction import Interaction
        from recbole.model.sequential_recommender import SASRec
        from recbole.utils import init_seed

        self.config["hidden_dropout_prob"] = self.config["attn_dropout_prob"] = dropout
        init_seed(SEED, True)
        model = SASRec(self.config, self.dataset)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        rng = np.random.default_rng(SEED)
        lengths = self.seq_lens.numpy()
        for epoch in range(1, epochs + 1):
            model.train()
            total = 0.0
            batches = self._batches(rng, lengths)
            for rows in batches:
                index = torch.from_numpy(rows)
                width = int(lengths[rows].max())
                batch = Interaction({model.ITEM_SEQ: self.seqs[index, :width], model.ITEM_SEQ_LEN: self.seq_lens[index],
                                     model.POS_ITEM_ID: self.next_items[index]})
                optimizer.zero_grad()
                loss = model.calculate_loss(batch)
                loss.backward()
                optimizer.step()
                total += loss.item()
            if not after_epoch(epoch, total / max(len(batches), 1), model):
                break
        return model

    def _batches(self, rng: Any, lengths: Any) -> list[Any]:
        """One epoch's batches of example rows: shuffled, sorted by length within runs, in random order."""
        import numpy as np

        order = rng.permutation(self.n_examples)
        run = TRAIN_BATCH_SIZE * SORT_CHUNK_BATCHES
        runs = [order[s : s + run] for s in range(0, len(order), run)]
        order = np.concatenate([r[np.argsort(lengths[r], kind="stable")] for r in runs]) if runs else order
        batches = [order[s : s + TRAIN_BATCH_SIZE] for s in range(0, len(order), TRAIN_BATCH_SIZE)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def inputs(self, users: Any, train: Any = None) -> tuple[Any, Any, list[Any]]:
        """Per user of `users`, from their sequence in `train` (default: this dataset's file).

        Returns:
            [users, max_len] their last max_len items (internal ids, left-aligned, 0-padded),
            [users] how many, and per user every item of the sequence (internal ids) to exclude.
        """
        import numpy as np

        frame = self.train if train is None else train
        grouped = frame.groupby("user")["item"].apply(lambda s: s.to_numpy())
        seqs = np.zeros((len(users), self.max_len), dtype=np.int64)
        lens = np.zeros(len(users), dtype=np.int64)
        history = []
        for row, user in enumerate(users):
            items = grouped.get(user)
            if items is None or len(items) == 0:
                raise ValueError(f"user {user} is scored but has no training items")
            ids = self.internal[items]
            window = ids[-self.max_len :]
            seqs[row, : len(window)] = window
            lens[row] = len(window)
            history.append(ids)
        return seqs, lens, history

    def top_k(self, model: Any, inputs: tuple[Any, Any, list[Any]], k: int) -> Any:
        """[users, k] caller codes: the full catalog ranked, padding and each user's history excluded.

        -1 fills a list only past the items left to rank.
        """
        import numpy as np
        import torch
        from recbole.data.interaction import Interaction

        seqs, lens, history = inputs
        model.eval()
        out = np.full((len(seqs), k), -1, dtype=np.int64)
        with torch.no_grad():
            for start in range(0, len(seqs), PREDICT_BATCH):
                stop = min(start + PREDICT_BATCH, len(seqs))
                width = int(lens[start:stop].max())
                batch = Interaction({model.ITEM_SEQ: torch.from_numpy(seqs[start:stop, :width]),
                                     model.ITEM_SEQ_LEN: torch.from_numpy(lens[start:stop])})
                scores = model.full_sort_predict(batch)  # [batch, n_items + 1], column 0 is padding
                scores[:, 0] = -torch.inf
                seen = history[start:stop]
                rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(seen)])
                scores[torch.from_numpy(rows), torch.from_numpy(np.concatenate(seen))] = -torch.inf
                values, ids = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                codes = np.where(torch.isinf(values).numpy(), -1, self.codes[ids.numpy()])
                out[start:stop, : codes.shape[1]] = codes
        return out


def _worker_main(args: argparse.Namespace) -> None:
    import warnings

    import torch

    # RecBole 1.2.1 calls pandas' chained inplace fillna on every load: pages of FutureWarnings.
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"recbole_sasrec {args.worker} dropout {args.dropout}: {message}", file=sys.stderr, flush=True)

    result = (_tune_worker if args.worker == "tune" else _refit_worker)(args, log)
    args.out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS)
    parser.add_argument("--dropouts", default=",".join(str(d) for d in DROPOUT_GRID),
                        help="comma-separated grid of dropout rates")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads per worker")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines on stderr")
    # The workers' own arguments, passed by sasrec_top20.
    parser.add_argument("--worker", choices=("tune", "refit"), help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dropout", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker_main(args)
        return
    result = sasrec_top20(args.split_dir, args.cache_dir, max_epochs=args.max_epochs, show_progress=not args.quiet,
                          dropouts=tuple(float(d) for d in args.dropouts.split(",")), threads=args.threads)
    summary = {k: v for k, v in result.items() if not k.startswith("top20")}
    summary["grid"] = [{k: v for k, v in g.items() if k != "curve"} for g in result["grid"]]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
