"""Skill LoRA training (supervised fine-tuning) and the DATA-MIX baseline.

:func:`train_lora` injects a LoRA with PEFT, trains it with the Hugging Face ``Trainer`` (which runs
DDP under ``torchrun`` / ``accelerate launch``, gloo on CPU) and saves a standard PEFT adapter
folder with ``train_info.json`` and ``train_log.jsonl`` beside the weights.

DATA-MIX (LoRA Soups, Prabhakar et al. 2024, arXiv 2410.13025, §4 baselines) is the same procedure
on the union of all skills' data, optionally with mixing weights (:mod:`lorasoups.train.data`).

Working files: checkpoints live in a hidden sibling folder ``<out parent>/.<out name>.work/`` so a
killed run can be continued with ``resume=True``; the output folder itself is written atomically
(:func:`lorasoups.paths.atomic_dir`) only when training has finished, and the work folder is
removed then (unless ``keep_checkpoints``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..methods import register_method
from ..paths import atomic_dir, check_not_input
from .loop import resolve_precision
from .options import DataMixOptions, TrainOptions

OPTIONS_SPEC = TrainOptions  # the options of ``train_lora(**options)``, read by config validation
# Runner-only keywords of train_lora that are not training hyper-parameters.
RUN_KEYWORDS = ("resume", "overwrite", "keep_checkpoints", "progress", "callbacks", "threads")


def make_options(**options: Any) -> TrainOptions:
    """Validated :class:`~lorasoups.train.options.TrainOptions` (``None`` values mean "default").

    Raises:
        ConfigError: every unknown or invalid option, with "did you mean".
    """
    given = {k: v for k, v in options.items() if v is not None or k == "max_steps"}
    return TrainOptions.parse(given, where="train")


# --------------------------------------------------------------------------------------------
# Trainer glue
# --------------------------------------------------------------------------------------------

def work_dir_for(out: str | os.PathLike) -> Path:
    """The checkpoint folder of a run writing ``out``: ``<parent>/.<name>.work``."""
    out = Path(out)
    return out.parent / f".{out.name}.work"


def lean_trainer_class():
    """A ``transformers.Trainer`` subclass whose loss is :func:`lorasoups.train.loss.lm_loss_sum`.

    Same value as the model's own loss (mean next-token cross-entropy over label tokens, divided by
    the Trainer's ``num_items_in_batch`` under gradient accumulation exactly as the model would), but
    the output head runs only at label positions and in chunks, so no (batch, seq, vocab) logits
    tensor is built. Defined lazily so importing this module stays light.
    """
    from transformers import Trainer

    from .loss import lm_loss_sum

    class LeanLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # The Trainer's mixed precision is accelerate's autocast wrapped around model.forward;
            # lm_loss_sum calls the decoder and the head directly, so the region is opened here
            # (a no-op under fp32). Without it, "bf16" training ran every matmul in fp32.
            with self.accelerator.autocast():
                s, n = lm_loss_sum(model, inputs)
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                loss = s / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
            else:
                loss = s / max(n, 1)
            return (loss, {"loss": loss}) if return_outputs else loss

    return LeanLossTrainer


def _callbacks():
    """TrainerCallback classes (defined lazily so importing this module stays light)."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """Appends ``{step, loss, lr, tokens_per_s, grad_norm, epoch, time_s}`` lines (rank 0)."""

        def __init__(self, path: Path):
            self.path = path
            self.last_t = None
            self.last_tokens = 0
            self.last = {}

        def on_train_begin(self, args, state, control, **kw):
            self.last_t = time.perf_counter()
            self.last_tokens = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.perf_counter()
            if "loss" in logs:
                dt = max(now - self.last_t, 1e-9)
                rec = {"step": state.global_step, "loss": round(float(logs["loss"]), 6),
                       "lr": float(logs.get("learning_rate", 0.0)),
                       "tokens_per_s": round((state.num_input_tokens_seen - self.last_tokens) / dt, 2),
                       "grad_norm": None if logs.get("grad_norm") is None else round(float(logs["grad_norm"]), 6),
                       "epoch": round(float(state.epoch or 0), 4), "tokens": int(state.num_input_tokens_seen)}
                self.last_t, self.last_tokens = now, state.num_input_tokens_seen
            elif "eval_loss" in logs:
                rec = {"step": state.global_step, "val_loss": round(float(logs["eval_loss"]), 6)}
            else:
                return
            self.last = rec
            if state.is_world_process_zero:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")

    class ProgressBar(TrainerCallback):
        """A tqdm bar (rank 0) showing loss and tokens/s."""

        def __init__(self, log: JsonlLog):
            self.log, self.bar = log, None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                from tqdm.auto import tqdm

                from ..progress import progress_enabled

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                dynamic_ncols=True, disable=not progress_enabled())  # terminal only

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.bar is not None and "loss" in self.log.last:
                self.bar.set_postfix(loss=f"{self.log.last['loss']:.4f}", tok_s=f"{self.log.last['tokens_per_s']:.0f}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return JsonlLog, ProgressBar


def data_log_record(td: Any) -> dict[str, Any]:
    """The train log's first line: ``{"step": 0, "data": {...}}`` with per-source counts of
    examples used and of records skipped or cut for length (see :class:`~lorasoups.train.data.SourceStats`)."""
    keys = ("name", "selected", "used", "skipped_long_prompts", "skipped_long_responses", "truncated_responses")
    return {"step": 0, "data": {"sources": [{k: getattr(s, k) for k in keys} for s in td.sources], **td.cut_summary()}}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def _comparable(options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(options, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def train_lora(base: str, data: Sequence[str], out: str | os.PathLike, *, resume: bool = False,
               overwrite: bool = False, keep_checkpoints: bool = False, progress: bool = True,
               callbacks: Sequence[Any] | None = None, threads: int | None = None, device: str = "auto",
               prepared: tuple[Any, list[dict], list[dict]] | None = None, extra_info: dict[str, Any] | None = None,
               **options: Any) -> Path:
    """Train one LoRA on ``data`` (one spec: a skill LoRA; several: DATA-MIX) and save it to ``out``.

    Args:
        base: base model (embedded name such as ``smollm2-135m``, HF folder, or hub id).
        data: data specs (see :func:`lorasoups.train.data.parse_data_spec`).
        out: output adapter folder (standard PEFT: ``adapter_config.json``,
            ``adapter_model.safetensors``) plus ``train_info.json`` and ``train_log.jsonl``.
        resume: continue from the newest checkpoint in ``.<out>.work`` (options must match).
        overwrite: replace an existing ``out``.
        keep_checkpoints: keep the work folder after success.
        progress: show a progress bar.
        callbacks: extra ``transformers.TrainerCallback`` objects.
        threads: ``torch.set_num_threads`` for this process (CPU); None leaves it as it is.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N`` (single process:
            ``torch.cuda.set_device(N)``; under torchrun each rank takes its LOCAL_RANK's GPU).
        prepared: examples a caller has already drawn from ``data`` with the same tokenizer, as
            ``(TrainingData, train examples, validation examples)``: used as they are instead of
            loading ``data`` and splitting by ``val_fraction`` (the fresh-LoRA control trains on
            exactly CAT's examples this way, :mod:`lorasoups.train.controls`).
        extra_info: keys added to (or replacing in) ``train_info.json``; read after training, so a
            callback may fill it.
        **options: :class:`TrainOptions` fields (``r``, ``lora_alpha``, ``learning_rate``, ...).

    Returns:
        ``Path(out)``.

    Raises:
        FileExistsError: ``out`` exists and not ``overwrite``.
        ConfigError: unknown or invalid option; ``resume`` with different options.
        DataError: bad training data (named file and record); nothing is written then.
        ModelError: the base model cannot be loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    from ..models import EMBEDDED, canonical_base_id, load_tokenizer, resolve_base
    from ..provenance import provenance, sha256_file
    from .data import load_training_data, with_weights

    t_start = time.time()
    opts = make_options(**options)
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    base_path = resolve_base(base)
    specs = with_weights(data, opts.weights)
    from ..devices import device_type, resolve_device

    device_str = resolve_device(device)
    device = device_type(device_str)
    if device_str.startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(int(device_str.split(":")[1]))
    precision, precision_reason = resolve_precision(opts.precision, device)

    tokenizer = load_tokenizer(base)
    if prepared is None:
        td = load_training_data(specs, tokenizer, cutoff_len=opts.cutoff_len, max_samples=opts.max_samples,
                                fraction=opts.fraction, seed=opts.seed, train_on_inputs=opts.train_on_inputs,
                                data_dir=opts.data_dir, text_overlap=opts.text_overlap,
                                skip_long_prompts=opts.skip_long_prompts, long_responses=opts.long_responses)
        for line in td.cut_report():
            print(f"train: data: {line}", flush=True)
    else:
        td = prepared[0]
    check_not_input(out, list(dict.fromkeys(td.files)) + ([base_path] if Path(base_path).exists() else []))
    if prepared is None:
        examples = td.examples
        n_val = int(round(len(examples) * opts.val_fraction)) if opts.val_fraction > 0 else 0
        if n_val and len(examples) - n_val < 1:
            raise ConfigError(f"val_fraction {opts.val_fraction} leaves no training examples out of {len(examples)}")
        train_set, val_set = examples[: len(examples) - n_val], examples[len(examples) - n_val:]
    else:
        train_set, val_set = list(prepared[1]), list(prepared[2])

    world = int(os.environ.get("WORLD_SIZE", "1"))
    work = work_dir_for(out)
    resolved = {"base": base, "data": [str(s) for s in specs], **opts.model_dump(),
                "precision_resolved": precision}
    resolved_cmp = _comparable(resolved)

    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    torch.manual_seed(opts.seed)
    lcfg = LoraConfig(r=opts.r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules=list(opts.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise ConfigError(f"train: target modules {opts.target_modules} do not match the base model {base}: {e}") from None
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    ck = ("activation_checkpointing" if "activation_checkpointing" in getattr(TrainingArguments, "__dataclass_fields__", {})
          else "gradient_checkpointing")
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=opts.max_steps if opts.max_steps else -1,
        num_train_epochs=opts.epochs or 1.0,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler,
        warmup_steps=opts.warmup_steps,
        weight_decay=opts.weight_decay,
        max_grad_norm=opts.max_grad_norm,
        logging_steps=opts.logging_steps,
        save_strategy="steps",
        save_steps=opts.save_steps,
        save_total_limit=opts.save_total_limit,
        eval_strategy="steps" if val_set else "no",
        eval_steps=opts.save_steps if val_set else None,
        seed=opts.seed,
        data_seed=opts.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        ddp_backend=("gloo" if device == "cpu" else None) if world > 1 else None,
        ddp_find_unused_parameters=False,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
        optim="adamw_torch",
        # length-grouped batches (transformers' LengthGroupedSampler, drawn from the seeded torch RNG):
        # the same examples per epoch, in batches of similar length, so little of each batch is padding
        train_sampling_strategy="group_by_length" if opts.group_by_length else "random",
        # activation checkpointing per decoder layer (non-reentrant: no input needs requires_grad);
        # newer transformers call it activation_checkpointing, older gradient_checkpointing
        **{ck: opts.gradient_checkpointing,
           f"{ck}_kwargs": {"use_reentrant": False} if opts.gradient_checkpointing else None},
    )
    is_main = args.process_index == 0
    ckpt = None
    with args.main_process_first(desc="prepare work dir"):
        if is_main:
            if resume:
                ckpt = get_last_checkpoint(str(work)) if work.is_dir() else None
                if ckpt is not None:
                    saved = json.loads((work / "options.json").read_text()) if (work / "options.json").is_file() else None
                    if saved is not None and saved != resolved_cmp:
                        diff = sorted(k for k in set(saved) | set(resolved_cmp) if saved.get(k) != resolved_cmp.get(k))
                        raise ConfigError(f"--resume: options differ from the interrupted run in {work} ({', '.join(diff)}); "
                                          "rerun with the same options or without --resume")
                else:
                    print(f"train: --resume: no checkpoint in {work}; starting from step 0")
            elif work.exists():
                print(f"train: discarding old checkpoints in {work} (use --resume to continue them)")
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
            (work / "options.json").write_text(json.dumps(resolved_cmp, indent=2, sort_keys=True))
            if ckpt is None:  # first line: what the data loader kept, skipped and cut
                (work / "train_log.jsonl").write_text(json.dumps(data_log_record(td)) + "\n")
    if resume and not is_main:
        ckpt = get_last_checkpoint(str(work)) if work.is_dir() else None
    resumed_step = None
    if ckpt is not None:
        resumed_step = int(json.loads((Path(ckpt) / "trainer_state.json").read_text())["global_step"])
        if is_main:
            _truncate_log(work / "train_log.jsonl", resumed_step)


    from .data import collate

    JsonlLog, ProgressBar = _callbacks()
    log_cb = JsonlLog(work / "train_log.jsonl")
    cbs = [log_cb] + ([ProgressBar(log_cb)] if progress else []) + list(callbacks or [])
    trainer = lean_trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=val_set or None,
                      data_collator=lambda batch: collate(batch, tokenizer.pad_token_id), callbacks=cbs)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    try:
        result = trainer.train(resume_from_checkpoint=ckpt)
    except BaseException:
        if is_main and work.is_dir():
            if any(work.glob("checkpoint-*")):
                print(f"train: stopped; checkpoints kept in {work}: rerun with --resume to continue")
            else:
                shutil.rmtree(work, ignore_errors=True)
        raise
    val_loss = None
    if val_set:  # the Trainer may already have evaluated at the last step
        last = log_cb.last
        if "val_loss" in last and last["step"] == trainer.state.global_step:
            val_loss = float(last["val_loss"])
        else:
            val_loss = float(trainer.evaluate()["eval_loss"])

    if trainer.is_world_process_zero():
        peft_model = trainer.model
        peft_model.peft_config["default"].base_model_name_or_path = canonical_base_id(base if base in EMBEDDED else str(base_path))
        log_lines = [json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines() if x.strip()]
        losses = [x["loss"] for x in log_lines if "loss" in x]
        tps = [x["tokens_per_s"] for x in log_lines if "tokens_per_s" in x]
        info = {
            "command": "train",
            "method": "data_mix" if len(specs) > 1 else "skill_lora",
            "base": {"arg": base, "path": str(base_path)},
            "options": resolved,
            "precision": {"requested": opts.precision, "resolved": precision, "reason": precision_reason,
                          "device": device_str, "lora_weights": "fp32", "optimizer_state": "fp32"},
            "data": [{**s.as_dict(), "sha256": sha256_file(s.file)} for s in td.sources],
            "data_cuts": {"cutoff_len": opts.cutoff_len, "long_responses": opts.long_responses,
                          "skip_long_prompts": opts.skip_long_prompts, **td.cut_summary()},
            "n_train_examples": len(train_set),
            "n_val_examples": len(val_set),
            "trainable_parameters": int(n_trainable),
            "world_size": args.world_size,
            "steps": int(trainer.state.global_step),
            "resumed_from_step": resumed_step,
            "tokens_trained": int(trainer.state.num_input_tokens_seen),
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "train_loss_mean": float(result.training_loss) if result.training_loss is not None else None,
            "val_loss": val_loss,
            "mean_tokens_per_s": round(sum(tps) / len(tps), 2) if tps else None,
            "wall_time_s": round(time.time() - t_start, 2),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "provenance": provenance(),
            "torch_threads": torch.get_num_threads(),
        }
        info.update(extra_info or {})
        with atomic_dir(out, overwrite=overwrite) as tmp:
            # save_embedding_layers=False: the vocabulary is never changed here; "auto" would look the
            # recorded base id up on the hub just to check that
            peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
            shutil.copyfile(work / "train_log.jsonl", tmp / "train_log.jsonl")
            (tmp / "train_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            from ..io.card import write_model_card

            write_model_card(tmp, base_model=peft_model.peft_config["default"].base_model_name_or_path,
                             method=info["method"], data=[{"name": d.get("spec") or d.get("name"),
                                                           "sha256": d.get("sha256")} for d in info["data"]],
                             params={k: resolved[k] for k in ("r", "lora_alpha", "learning_rate", "max_steps", "seed")
                                     if k in resolved},
                             metrics={"first_loss": info["first_loss"], "final_loss": info["final_loss"],
                                      "val_loss": val_loss, "steps": info["steps"]})
        if not keep_checkpoints:
            shutil.rmtree(work, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return out


@register_method(
    "data_mix", kind="trained", space="model",
    reference="LoRA Soups (Prabhakar et al. 2024, arXiv 2410.13025) §4: DATA-MIX baseline",
    description="one LoRA trained on the union (optionally weighted mix) of all skills' data",
    options=DataMixOptions, stage="data_mix", order=9, title="train DATA-MIX LoRA",
    uses_adapters=False, resumable=True,
)
def data_mix(base: str, adapters: Sequence[Any], data: Sequence[str], out: str | os.PathLike, *, seed: int = 0,
             **params: Any) -> Path:
    """DATA-MIX: one LoRA on the mix of all skill datasets (``weights=`` one per dataset); ``adapters``
    is ignored (it trains from data alone). Same options and run keywords as :func:`train_lora`;
    returns the adapter folder."""
    return train_lora(base, data, out, seed=seed, **params)
