"""Train one peer library's model on ctr's encoded splits; print one JSON line of results.

Runs inside the peers' own virtualenv (``benchmarks/peers/requirements.txt``: deepctr-torch and
torch-rechub from PyPI, the same torch as ctr), so it imports neither ``ctr`` nor ``pipelines``: it
reads the ``dataset.json`` that ``benchmarks.peer_compare`` writes (field names, table rows, the
encoded Parquet splits of ctr's ``prepare``), so every system trains on the same rows and ids.

The loop around the libraries is the same for both and mirrors ``ctr``'s: at most ``epochs``
epochs, validation AUC and logloss after each, early stopping on ctr's ``monitor`` (AUC − logloss by
default): stop after ``patience`` epochs without improvement, restore the
best epoch's weights, then score the test split. Only the libraries' own models, training step and
optimizer (Adam over every parameter) are used. With ``"sweep": true`` in the hyperparameters
(``benchmarks.scale_sweep``) it only times one pass over the first ``max_train_rows`` training rows.

    .bench-peers/bin/python benchmarks/peers/run_peer.py --dataset D.json --system deepctr \
        --model deepfm --seed 2021 --hparams '{"embedding_dim": 16, ...}'
"""

import argparse
import copy
import json
import resource
import time

import numpy as np
import polars as pl
import torch
from sklearn.metrics import log_loss, roc_auc_score


def load(dataset: dict, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Encoded split → model inputs. With behaviour histories (DIN) every id is shifted by one so that 0 is
    the padding both peers mask (ctr's id 0, the OOV row, becomes 1); a history is ``[N, max_len]``,
    left-aligned and zero-padded, with its length in ``<name>_len``."""
    frame = pl.read_parquet(dataset["splits"][split])
    shift = 1 if dataset.get("sequences") else 0
    x = {f["name"]: frame.get_column(f["name"]).to_numpy().astype(np.int64) + shift for f in dataset["sparse"]}
    for f in dataset.get("sequences", []):
        lists = frame.get_column(f["name"])
        lengths = lists.list.len().to_numpy().astype(np.int64)
        flat = lists.explode(empty_as_null=False, keep_nulls=False).to_numpy().astype(np.int64) + shift
        padded = np.zeros((len(lengths), f["max_len"]), dtype=np.int64)
        padded[np.arange(f["max_len"]) < lengths[:, None]] = flat  # row-major fill: each row's first ids
        x[f["name"]], x[f"{f['name']}_len"] = padded, lengths
    x.update({name: frame.get_column(name).to_numpy().astype(np.float32) for name in dataset["dense"]})
    return x, frame.get_column(dataset["label"]).to_numpy().astype(np.float32)


def peer_rows(dataset: dict, field: dict) -> int:
    """Embedding rows a peer's table needs (one more with histories: row 0 is the padding)."""
    return field["rows"] + (1 if dataset.get("sequences") else 0)


class DeepCTR:
    """deepctr-torch (``DeepFM``, ``AutoInt``, ``DIN``; AutoInt+ = AutoInt with a DNN) through ``fit``/``predict``."""

    def __init__(self, dataset: dict, model: str, hp: dict, seed: int) -> None:
        from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
        from deepctr_torch.models import DIN, AutoInt, DeepFM

        cols = [SparseFeat(f["name"], vocabulary_size=peer_rows(dataset, f), embedding_dim=hp["embedding_dim"])
                for f in dataset["sparse"]] + [DenseFeat(name, 1) for name in dataset["dense"]]
        cols += [VarLenSparseFeat(SparseFeat(f["name"], vocabulary_size=peer_rows(dataset, f),
                                             embedding_dim=hp["embedding_dim"], embedding_name=f["candidate"]),
                                  maxlen=f["max_len"], length_name=f"{f['name']}_len")
                 for f in dataset.get("sequences", [])]
        common = dict(dnn_hidden_units=tuple(hp["dnn_hidden"]), dnn_dropout=hp["dnn_dropout"],
                      dnn_use_bn=hp["dnn_batchnorm"], seed=seed, device="cpu")
        if model == "din":  # histories are matched to candidates by deepctr's naming rule: hist_<candidate>
            assert all(f["name"] == f"hist_{f['candidate']}" for f in dataset["sequences"]), dataset["sequences"]
            self.model = DIN(cols, [f["candidate"] for f in dataset["sequences"]],
                             att_hidden_size=tuple(hp["attention_hidden"]), att_activation="Dice",
                             att_weight_normalization=hp["attention_softmax"], **common)
        elif model == "deepfm":
            self.model = DeepFM(cols, cols, **common)
        elif model == "autoint_plus":
            self.model = AutoInt(cols, cols, att_layer_num=hp["attention_layers"], att_head_num=hp["num_heads"],
                                 **common)
        else:
            raise SystemExit(f"deepctr: no model {model!r}")
        self.model.compile(torch.optim.Adam(self.model.parameters(), lr=hp["lr"]), "binary_crossentropy")
        self.batch, self.eval_batch = hp["batch_size"], hp["eval_batch_size"]

    def train_epoch(self, x, y) -> None:
        self.model.fit(x, y, batch_size=self.batch, epochs=1, verbose=0, shuffle=True)

    def predict(self, x) -> np.ndarray:
        return self.model.predict(x, batch_size=self.eval_batch).reshape(-1)


class RecHub:
    """torch-rechub (``DeepFM``, ``AutoInt`` with an MLP = AutoInt+, ``DIN``) through ``CTRTrainer``'s epoch step."""

    def __init__(self, dataset: dict, model: str, hp: dict, seed: int) -> None:
        from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
        from torch_rechub.models.ranking import DIN, AutoInt, DeepFM
        from torch_rechub.trainers import CTRTrainer

        torch.manual_seed(seed)
        sparse = [SparseFeature(f["name"], vocab_size=peer_rows(dataset, f), embed_dim=hp["embedding_dim"])
                  for f in dataset["sparse"]]
        dense = [DenseFeature(name) for name in dataset["dense"]]
        mlp = {"dims": list(hp["dnn_hidden"]), "dropout": hp["dnn_dropout"], "activation": "relu"}
        if model == "din":
            seqs = dataset["sequences"]
            cands = {f["candidate"] for f in seqs}
            history = [SequenceFeature(f["name"], vocab_size=peer_rows(dataset, f), embed_dim=hp["embedding_dim"],
                                       pooling="concat", shared_with=f["candidate"]) for f in seqs]
            by_name = {s.name: s for s in sparse}
            target = [by_name[f["candidate"]] for f in seqs]  # aligned with history, position by position
            tower = {"dims": mlp["dims"], "dropout": mlp["dropout"]}  # its DIN fixes the tower's activation: Dice
            self.model = DIN([s for s in sparse if s.name not in cands] + dense, history, target, mlp_params=tower,
                             attention_mlp_params={"dims": list(hp["attention_hidden"]), "activation": "dice",
                                                   "use_softmax": hp["attention_softmax"]})
        elif model == "deepfm":
            self.model = DeepFM(deep_features=sparse + dense, fm_features=sparse, mlp_params=mlp)
        elif model == "autoint_plus":
            self.model = AutoInt(sparse, dense, num_layers=hp["attention_layers"], num_heads=hp["num_heads"],
                                 mlp_params=mlp)
        else:
            raise SystemExit(f"rechub: no model {model!r}")
        self.trainer = CTRTrainer(self.model, optimizer_params={"lr": hp["lr"], "weight_decay": 0.0}, n_epoch=1,
                                  device="cpu")
        self.batch, self.eval_batch = hp["batch_size"], hp["eval_batch_size"]

    def _loader(self, x, y, batch: int, shuffle: bool):
        from torch.utils.data import DataLoader
        from torch_rechub.utils.data import TorchDataset

        return DataLoader(TorchDataset(x, y), batch_size=batch, shuffle=shuffle)

    def train_epoch(self, x, y) -> None:
        self.trainer.train_one_epoch(self._loader(x, y, self.batch, True))

    def predict(self, x) -> np.ndarray:
        y = np.zeros(len(next(iter(x.values()))), dtype=np.float32)
        return np.asarray(self.trainer.predict(self.model, self._loader(x, y, self.eval_batch, False))).reshape(-1)


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, p, labels=[0, 1]))}


def monitored(monitor: str, m: dict) -> float:
    """ctr's early-stopping quantity, higher is better: AUC − logloss, AUC, or −logloss."""
    return {"auc_logloss": m["auc"] - m["logloss"], "auc": m["auc"], "logloss": -m["logloss"]}[monitor]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--system", choices=["deepctr", "rechub"], required=True)
    ap.add_argument("--model", choices=["deepfm", "autoint_plus", "din"], required=True)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--hparams", required=True, help="JSON: embedding_dim, dnn_hidden, dnn_dropout, ...")
    args = ap.parse_args()
    dataset, hp = json.loads(open(args.dataset).read()), json.loads(args.hparams)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(hp.get("threads", torch.get_num_threads()))
    if hp.get("sweep"):  # benchmarks.scale_sweep: the speed of max_train_rows training rows, nothing else
        x, y = load(dataset, "train")
        n = min(len(y), hp["max_train_rows"])
        x, y = {k: v[:n] for k, v in x.items()}, y[:n]
        system = (DeepCTR if args.system == "deepctr" else RecHub)(dataset, args.model, hp, args.seed)
        start = time.perf_counter()
        system.train_epoch(x, y)
        seconds = time.perf_counter() - start
        print(json.dumps({"train_examples_per_s": n / seconds, "rows": n, "threads": torch.get_num_threads()}))
        return
    train, valid, test = (load(dataset, s) for s in ("train", "valid", "test"))
    system = (DeepCTR if args.system == "deepctr" else RecHub)(dataset, args.model, hp, args.seed)
    best, best_value, bad, history, train_s, first_epoch_end = None, -float("inf"), 0, [], 0.0, None
    for epoch in range(hp["epochs"]):
        start = time.perf_counter()
        system.train_epoch(*train)
        seconds = time.perf_counter() - start
        train_s += seconds
        first_epoch_end = first_epoch_end or time.time()
        m = metrics(valid[1], system.predict(valid[0]))
        history.append({"epoch": epoch + 1, "seconds": seconds, **{f"valid_{k}": v for k, v in m.items()}})
        value = monitored(hp.get("monitor", "auc"), m)
        if value > best_value:
            best_value, bad, best = value, 0, (epoch + 1, copy.deepcopy(system.model.state_dict()))
        else:
            bad += 1
            if bad > hp["patience"]:
                break
    system.model.load_state_dict(best[1])
    out = {"system": args.system, "model": args.model, "seed": args.seed, "test": metrics(test[1], system.predict(test[0])),
           "best_epoch": best[0], "epochs_run": len(history),
           "train_examples_per_s": len(train[1]) * len(history) / max(train_s, 1e-9),
           "first_epoch_end_unix": first_epoch_end, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "history": history, "torch_threads": torch.get_num_threads()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
