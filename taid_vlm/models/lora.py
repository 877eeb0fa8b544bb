"""LoRA students through peft: wrap, read the effective LM head, merge, save.

``apply_lora`` injects peft LoRA layers into a student adapter's model IN PLACE (the model keeps
its transformers class, so the adapter's hidden-state pass, generation and saving see the same
object) and freezes everything but the adapters. What the rest of the toolkit needs to know:

- the chunked loss engine reads the LM head's weight instead of calling the head, so a LoRA on
  the head must reach it as the EFFECTIVE weight ``W + scale * B @ A``: ``effective_head`` builds
  it in the autograd graph, so the head gradient the engine computes flows on to A and B (and the
  frozen W gets none). Refused: LoRA dropout on the head with the chunked engine (dropout acts on
  the head's input, which no single weight matrix can express) and a LoRA on any layer whose
  weight is tied to another (a tied head and input embedding: merging ``W + scale * B @ A`` into
  the shared matrix would change the embedding too, so the merged student would not be the one
  that was trained);
- checkpoints hold the adapters only (DCP without the frozen parameters); the base weights are read again from
  the student checkpoint when a run resumes;
- the saved student is merged (``merged_state``: base names, ``W + scale * B @ A``), a plain
  ``save_pretrained`` folder that reloads in transformers without peft, or with
  ``save_adapter_only`` peft's own adapter folder (``save_adapter``), loadable with
  ``peft.PeftModel.from_pretrained`` over the student it was trained from, and by
  ``models.load`` (so ``taid-vlm eval``), which merges it into the base it names.

Only linear layers take adapters (``nn.Linear``; "all-linear" is peft's choice of every linear
layer but the output head). The frozen base may be bf16 while the adapters stay fp32 (peft casts
them up): a QLoRA-style memory profile without 4-bit quantisation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

ADAPTER = "default"  # peft's name for the one adapter
_TARGETS = re.compile(r"^[\w.*\-\[\]|()+?^$\\]+(,[\w.*\-\[\]|()+?^$\\]+)*$")


class LoraError(UserError):
    """A LoRA setting that cannot apply to this student; the message names the key and the fix."""


@dataclass(frozen=True)
class LoraSettings:
    r: int  # rank of every adapter (> 0)
    alpha: float | None = None  # scale = alpha / r; None: alpha = r (scale 1)
    dropout: float = 0.0  # on each adapted layer's input, in the adapter branch only
    target_modules: str = "all-linear"  # "all-linear" or comma-separated module names (suffixes)

    @property
    def targets(self) -> str | list[str]:
        """What peft's ``target_modules`` takes: "all-linear" or a list of module-name suffixes."""
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]

    def problems(self) -> list[str]:
        """Each out-of-range setting, named by its config key."""
        problems = []
        if self.r < 1:
            problems.append(f"lora_r must be >= 1 to train adapters (0 = full fine-tuning), got {self.r}")
        if self.alpha is not None and not self.alpha > 0:
            problems.append(f"lora_alpha must be > 0 (scale = lora_alpha / lora_r), got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"lora_dropout must lie in [0, 1), got {self.dropout}")
        if not _TARGETS.match(self.target_modules.replace(" ", "")):
            problems.append(f"lora_target_modules must be all-linear or comma-separated module names "
                            f"(e.g. q_proj,k_proj,v_proj,o_proj), got {self.target_modules!r}")
        return problems

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha if self.alpha is not None else self.r,
                          lora_dropout=self.dropout, target_modules=self.targets, bias="none")


# ---- wrapping ---------------------------------------------------------------------------------------


class LoraStudent:
    """A student model with peft LoRA layers injected, and the peft wrapper that owns them."""

    def __init__(self, peft_model: Any, settings: LoraSettings, base: str | None):
        self.peft_model = peft_model
        self.model: torch.nn.Module = peft_model.base_model.model  # the transformers model, adapted in place
        self.settings = settings
        self.base = base  # where the base weights come from (a folder or hub id); None: built in memory
        self.layers = {name: m for name, m in self.model.named_modules() if _is_lora_layer(m)}

    def adapter_names(self) -> list[str]:
        """The state-dict names of the adapter tensors (the model's own naming)."""
        return [f"{layer}.{part}.{ADAPTER}.weight" for layer in self.layers for part in ("lora_A", "lora_B")]

    def trainable_state(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The adapter tensors of ``state`` (default: the model's own state dict)."""
        state = state if state is not None else self.model.state_dict()
        return {name: state[name] for name in self.adapter_names()}

    def merged_state(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``state`` (the adapted model's names; default its own) as the plain model's state dict:
        every adapted weight is ``W + scale * B @ A`` (summed in fp32, stored in W's dtype), the
        adapter tensors dropped, ``base_layer.`` removed from the names."""
        state = state if state is not None else self.model.state_dict()
        merged = {}
        for name, tensor in state.items():
            if ".lora_" in name:
                continue
            merged[name.replace(".base_layer.", ".")] = tensor
        for layer_name, layer in self.layers.items():
            key = f"{layer_name}.weight"
            a, b = state[f"{layer_name}.lora_A.{ADAPTER}.weight"], state[f"{layer_name}.lora_B.{ADAPTER}.weight"]
            weight = merged[key]
            delta = _transpose(b.float() @ a.float(), layer.fan_in_fan_out) * layer.scaling[ADAPTER]
            merged[key] = (weight.float() + delta.to(weight.device)).to(weight.dtype)
        return merged

    def save_adapter(self, out_dir: str | Path, student: Any, state: dict[str, torch.Tensor] | None = None) -> None:
        """peft's adapter folder (adapter_config.json + adapter_model.safetensors) plus the student
        adapter's processor and chat template. ``state``: the adapted model's full state (gathered
        when sharded, cast to the dtype to ship); default: its own."""
        out = Path(out_dir)
        adapters = {f"base_model.model.{k}": v for k, v in self.trainable_state(state).items()}
        self.peft_model.peft_config[ADAPTER].base_model_name_or_path = self.base
        self.peft_model.save_pretrained(out, state_dict=adapters, save_embedding_layers=False)  # the adapters alone
        student.processor.chat_template = student.chat_template
        student.processor.save_pretrained(out)


def apply_lora(adapter: Any, settings: LoraSettings, *, base: str | None = None, chunked: bool = True) -> LoraStudent:
    """Inject LoRA layers into ``adapter.model`` (a ``ModelAdapter`` student), in place; only the
    adapters stay trainable. ``base``: the student's source, recorded in a saved adapter folder."""
    from peft import get_peft_model

    problems = settings.problems()
    if problems:
        raise LoraError("; ".join(problems))
    model = adapter.model
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        raise LoraError(f"lora_r={settings.r}: the student is a quantised checkpoint; LoRA students here train over a "
                        "bf16 or fp32 base (student_dtype: bfloat16 for a QLoRA-style memory profile), not a 4/8-bit one")
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    try:
        peft_model = get_peft_model(model, settings.peft_config())
    except ValueError as e:
        raise LoraError(f"lora_target_modules={settings.target_modules}: {' '.join(str(e).split())[:300]}; name "
                        f"linear layers of {type(model).__name__} (e.g. q_proj,v_proj) or use all-linear") from e
    lora = LoraStudent(peft_model, settings, base)
    _check_adapted_layers(lora, head_name, chunked)
    return lora


def _check_adapted_layers(lora: LoraStudent, head_name: str | None, chunked: bool) -> None:
    """Refuse what would train one model and save another (see the module docstring)."""
    model, settings = lora.model, lora.settings
    not_linear = [n for n, m in lora.layers.items() if not isinstance(m.get_base_layer(), torch.nn.Linear)]
    if not_linear:
        raise LoraError(f"lora_target_modules={settings.target_modules}: only linear layers take adapters here, not "
                        f"{', '.join(not_linear[:3])} ({type(lora.layers[not_linear[0]].get_base_layer()).__name__})")
    shared: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    for name, layer in lora.layers.items():
        names = shared[id(layer.get_base_layer().weight)]
        if len(names) > 1:
            others = [n for n in names if not n.startswith(f"{name}.")]
            raise LoraError(f"lora_target_modules={settings.target_modules}: {name}'s weight is tied to "
                            f"{', '.join(others)} (tie_word_embeddings); an adapter on it cannot be merged without "
                            f"changing that module too. Leave {name.rsplit('.', 1)[-1]} out of lora_target_modules")
    if head_name in lora.layers and settings.dropout > 0 and chunked:
        raise LoraError(f"lora_dropout={settings.dropout} with {head_name} in lora_target_modules: the chunked loss "
                        "reads the head as one weight matrix and dropout acts on its input; set lora_dropout=0, leave "
                        f"{head_name} out of lora_target_modules, or set chunked=false")


def effective_head(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's (weight, bias) as its forward applies them: ``W + scale * B @ A`` for a
    LoRA-adapted head (in the autograd graph: gradients reach A and B), the weight itself otherwise."""
    if not _is_lora_layer(head) or head.disable_adapters or head.merged:
        return head.weight, head.bias
    base = head.get_base_layer()
    weight = base.weight
    for name in head.active_adapters:
        if name in head.lora_A:
            weight = weight + head.get_delta_weight(name).to(weight.dtype)  # the hidden states' dtype: one GEMM
    return weight, base.bias


# ---- a saved adapter folder ----------------------------------------------------------------------


def adapter_base(path: str | Path) -> str | None:
    """The base a peft adapter folder applies to (its ``base_model_name_or_path``); None when
    ``path`` is not an adapter folder (a plain checkpoint, a hub id)."""
    folder = Path(path)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return None
    base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise LoraError(f"{folder}: a peft adapter folder that does not name its base model (base_model_name_or_path); "
                        "load the base and apply the adapter with peft.PeftModel.from_pretrained")
    return str(base)


def merge_adapter_folder(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """``model`` (the adapter's base) with the adapter folder at ``path`` merged in, as a plain model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()


def _is_lora_layer(module: torch.nn.Module) -> bool:
    if not type(module).__module__.startswith("peft."):  # no peft import for a model without adapters
        return False
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def _transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight
