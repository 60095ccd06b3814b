"""cld_recorder's framework callbacks on real training runs, offline (tiny models built from configs):
a Hugging Face ``Trainer`` fine-tuning a sequence classifier and a causal language model on an
instruction set, and a Lightning ``Trainer`` fitting an MLP. Each run's loss file is scored by stage 2,
and the recorded losses are the losses of the trained model, computed here independently.

transformers, accelerate and lightning come from requirements-frameworks.txt (``make test``
installs it), so these tests run in CI rather than being skipped."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cld_recorder import LightningCallback, LossRecorder, TrainerCallback
from conftest import run_script
from utils.files.scores import load_scores

N_TRAIN, N_VAL, EPOCHS, SEQ, VOCAB = 40, 12, 3, 12, 50
# Lightning's own use of a torch API that torch deprecates; not this project's.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


class Rows(Dataset):
    """Dict examples (``input_ids``, ``attention_mask``, ``labels``), as a tokenised text set gives them."""

    def __init__(self, **columns: torch.Tensor):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.columns.items()}


def text_set(n: int, gen: torch.Generator) -> Rows:
    """Two classes of right-padded token sequences: class 0 draws tokens from 5..27, class 1 from 25..47."""
    labels = torch.arange(n) % 2
    ids = 5 + torch.randint(0, 23, (n, SEQ), generator=gen) + 20 * labels[:, None]
    lengths = torch.randint(6, SEQ + 1, (n,), generator=gen)
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    return Rows(input_ids=ids * mask, attention_mask=mask, labels=labels)


def instruction_set(n: int, gen: torch.Generator) -> Rows:
    """Prompt then response tokens, right-padded: the labels are the response's token ids, -100 on the
    prompt and the padding (so only the response counts)."""
    ids, mask = torch.zeros(n, SEQ, dtype=torch.long), torch.zeros(n, SEQ, dtype=torch.long)
    labels = torch.full((n, SEQ), -100)
    for i in range(n):
        p, r = int(torch.randint(3, 6, (1,), generator=gen)), int(torch.randint(2, 6, (1,), generator=gen))
        prompt = torch.randint(5, 30, (p,), generator=gen)
        response = (prompt[:r] + 17) % VOCAB if r <= p else torch.randint(5, VOCAB, (r,), generator=gen)
        ids[i, :p + r] = torch.cat([prompt, response])
        mask[i, :p + r] = 1
        labels[i, p:p + r] = response
    return Rows(input_ids=ids, attention_mask=mask, labels=labels)


def training_args(tmp_path):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=EPOCHS, per_device_train_batch_size=8,
                             per_device_eval_batch_size=16, learning_rate=5e-3, report_to=[], save_strategy="no",
                             use_cpu=True, logging_strategy="no", disable_tqdm=True, seed=0)


def read_losses(path: str) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def scored(loss_file: str, tmp_path, n_train: int) -> dict:
    """Stage 2 on the recorded loss file, as a user runs it: exit 0 and a score of every training example."""
    out = str(tmp_path / "scores.pickle")
    proc = run_script("compute_cld_scores.py", "--loss_path", loss_file, "--output_path", out)
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(out)
    scores = load_scores(out)
    assert sum(len(v) for v in scores["indices"].values()) == n_train
    return scores


def test_a_hugging_face_classifier_records_the_losses_of_its_trained_model(tmp_path):
    import transformers
    from transformers import BertConfig, BertForSequenceClassification, Trainer

    gen = torch.Generator().manual_seed(0)
    train, val = text_set(N_TRAIN, gen), text_set(N_VAL, gen)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=SEQ, num_labels=2)
    model = BertForSequenceClassification(config)
    rec = LossRecorder(str(tmp_path / "sst"), train.columns["labels"], val.columns["labels"], epochs=EPOCHS)
    cb = TrainerCallback(rec, eval_dataset=val)
    assert isinstance(cb, transformers.TrainerCallback)
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=train, callbacks=[cb])
    trainer.train()

    assert cb.loss_file and os.path.exists(cb.loss_file)
    d = read_losses(cb.loss_file)
    assert d["tr_loss"].shape == (EPOCHS, N_TRAIN) and d["val_loss"].shape == (EPOCHS, N_VAL)
    final = trainer.model.eval()
    with torch.no_grad():
        for rows, recorded in ((train, d["tr_loss"][-1]), (val, d["val_loss"][-1])):
            c = rows.columns
            logits = final(input_ids=c["input_ids"], attention_mask=c["attention_mask"]).logits
            expected = F.cross_entropy(logits, c["labels"], reduction="none").numpy()
            np.testing.assert_allclose(recorded, expected, rtol=0, atol=1e-5)
    assert not np.allclose(d["tr_loss"][0], d["tr_loss"][-1])  # a row per epoch, of the model as it was then
    scored(cb.loss_file, tmp_path, N_TRAIN)


def test_a_causal_lm_records_the_mean_loss_of_its_response_tokens_in_one_group(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer

    gen = torch.Generator().manual_seed(1)
    train, val = instruction_set(N_TRAIN, gen), instruction_set(N_VAL, gen)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=1, n_head=2))
    rec = LossRecorder(str(tmp_path / "sft"), None, None, epochs=EPOCHS, n_train=N_TRAIN, n_val=N_VAL)
    cb = TrainerCallback(rec, eval_dataset=val)
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=train, callbacks=[cb])
    trainer.train()

    d = read_losses(cb.loss_file)
    assert d["num_classes"] == 1 and set(d["tr_lbl"]) == {0}
    final = trainer.model.eval()
    for i in (0, 7):  # by hand: token t's log-probability at position t - 1, over the response only
        row = train[i]
        n = int(row["attention_mask"].sum())
        with torch.no_grad():
            logp = torch.log_softmax(final(input_ids=row["input_ids"][None, :n]).logits[0].double(), dim=-1)
        response = [t for t in range(1, n) if row["labels"][t] != -100]
        expected = -np.mean([logp[t - 1, row["input_ids"][t]].item() for t in response])
        assert abs(d["tr_loss"][-1, i] - expected) < 1e-5
        every_token = -np.mean([logp[t - 1, row["input_ids"][t]].item() for t in range(1, n)])
        assert abs(d["tr_loss"][-1, i] - every_token) > 1e-3  # the prompt's tokens would change it
    scores = scored(cb.loss_file, tmp_path, N_TRAIN)
    assert list(scores["indices"]) == [0]


class MLP:
    """A Lightning module (built on first use, inside the tests): an MLP classifier trained by SGD."""

    @staticmethod
    def make():
        import lightning.pytorch as pl

        class Module(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

            def forward(self, x):
                return self.net(x)

            def training_step(self, batch, _):
                x, y = batch
                return F.cross_entropy(self(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        torch.manual_seed(0)
        return Module()


def tabular() -> tuple[torch.Tensor, ...]:
    """45 training and 15 validation rows of 8 features, 3 classes (feature 0 tells them apart a little)."""
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(60, 8, generator=gen), torch.randint(0, 3, (60,), generator=gen)
    x[:, 0] += y
    return x[:45], y[:45], x[45:], y[45:]


def fit(cb, epochs: int = EPOCHS):
    """The module after a Lightning fit of ``epochs`` epochs (shuffled batches) with the callback."""
    import lightning.pytorch as pl

    xt, yt, _, _ = tabular()
    module = MLP.make()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.fit(module, DataLoader(list(zip(xt, yt)), batch_size=16, shuffle=True))
    return module


def lightning_callback(folder: str):
    xt, yt, xv, yv = tabular()
    loaders = DataLoader(list(zip(xt, yt)), batch_size=16), DataLoader(list(zip(xv, yv)), batch_size=16)
    return LightningCallback(LossRecorder(folder, yt, yv, epochs=EPOCHS), *loaders)


def test_a_lightning_module_records_its_epochs(tmp_path):
    import lightning.pytorch as pl

    cb = lightning_callback(str(tmp_path / "tab"))
    assert isinstance(cb, pl.Callback)
    module = fit(cb)

    d = read_losses(cb.loss_file)
    xt, yt, _, _ = tabular()
    assert d["tr_loss"].shape == (EPOCHS, 45) and d["num_classes"] == 3
    with torch.no_grad():
        expected = F.cross_entropy(module.eval()(xt), yt, reduction="none").numpy()
    np.testing.assert_allclose(d["tr_loss"][-1], expected, rtol=0, atol=1e-5)
    scored(cb.loss_file, tmp_path, 45)


def test_a_run_of_fewer_than_3_epochs_ends_without_a_loss_file_and_says_so(tmp_path):
    cb = lightning_callback(str(tmp_path / "short"))
    with pytest.warns(RuntimeWarning, match="2 epoch.s. recorded .* CLD needs at least 3"):
        fit(cb, epochs=2)
    assert cb.loss_file is None and cb.recorder.epochs_recorded == 2
    assert not os.path.exists(tmp_path / "short" / "losses.pickle")
