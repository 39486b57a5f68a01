"""The two MoE backbones FedMoE / randomMoE run on, behind one small interface.

- `MoEfiedBert`: a dense BERT-family encoder (transformers' BertModel, e.g. MiniLM) turned into
  an MoE (models/moe.py: MoEfication or upcycling), clients masked to their held experts
  (`set_held`), the memory measured on `build_submoe`.
- `HFMoE`: a real Hugging Face MoE (models/hf/moe.py: mixtral, qwen2_moe, qwen3_moe, olmoe),
  clients train a physically cut copy holding only their experts (`cut`), whose frozen dense
  tensors are shared with the server model and whose expert tensors are index_select-ed.

Interface: prepare(alg, model), all_held(model), build(model, held) (the sub-MoE whose memory is
measured), client_model(model, held) (what a client trains/evaluates), aux(model), loads(model)
((L, E) token->expert assignments of the last forward over real tokens), costs(model).
"""

from __future__ import annotations

from fedfm.algorithms.submoe import MemoryModel, build_submoe, submodel_memory
from fedfm.core.errors import ConfigError
from fedfm.models.classifier import freeze
from fedfm.models.lora import inject_lora


class MoEfiedBert:
    name = "moefied"

    def prepare(self, alg, model) -> None:
        from fedfm.models.moe import load_moe_folder, moe_blocks, to_moe

        o, m = alg.opts, alg.env.finetune
        if model.backbone.device.type != "cpu":
            raise ConfigError(
                f"{alg.name}: the MoEfied / upcycled BERT (MiniLM) runs on the CPU only (its "
                "expert loop and k-means are CPU code, as with the former hand-written BERT); "
                "use train.device = \"cpu\". Hugging Face MoE models (model.name = \"hf\") "
                "bring their own experts.")
        if o.checkpoint:
            try:
                load_moe_folder(model.backbone, o.checkpoint)
            except ValueError as e:
                raise ConfigError(f"{alg.name}.checkpoint: {e}.") from None
            for blk in moe_blocks(model.backbone):
                blk.moe.router.top_k = o.top_k
        else:
            try:
                to_moe(model.backbone, o.num_experts, o.top_k, o.build, alg.env.seed)
            except ValueError as e:
                raise ConfigError(f"{alg.name}: {e}.") from None
        _attention_lora(alg, model)
        scale = m.scale
        inject_lora(model.backbone, ("dense_in", "dense_out"), o.expert_lora_rank,
                    scale * o.expert_lora_rank, alg.env.seed + 1)
        for blk in moe_blocks(model.backbone):
            blk.moe.router.weight.requires_grad_(True)

    def all_held(self, model):
        from fedfm.algorithms.submoe import all_held

        return all_held(model)

    def build(self, model, held):
        return build_submoe(model, held)

    def client_model(self, model, held):
        from fedfm.models.moe import set_held

        set_held(model, held)
        return model

    def aux(self, model):
        from fedfm.models.moe import aux_loss

        return aux_loss(model)

    def extra_loss(self, model, coef: float):
        """The MoE term added to the task loss after each forward: coef · balance (or None)."""
        return (lambda: coef * self.aux(model)) if coef else None

    def loads(self, model):
        import torch

        from fedfm.models.moe import moe_blocks

        return torch.stack([blk.last.load.double() for blk in moe_blocks(model)])

    def memory(self, model) -> MemoryModel:
        return MemoryModel.of(model)


class HFMoE:
    name = "hf"

    def prepare(self, alg, model) -> None:
        from fedfm.models.hf import moe as M

        o, m, bb = alg.opts, alg.env.finetune, model.backbone
        if o.checkpoint or o.build != "moefy":
            raise ConfigError(f"{alg.name}: checkpoint/build apply to the MiniLM MoE only; a "
                              "Hugging Face MoE (model.name = \"hf\") brings its own experts.")
        M.attach(model, bb)
        e = M.num_experts(bb)
        if o.num_experts not in (8, e):
            raise ConfigError(f"{alg.name}.num_experts = {o.num_experts}, but the model has {e} "
                              "experts per block (leave num_experts unset for HF MoE models).")
        if o.top_k > e:
            raise ConfigError(f"{alg.name}.top_k = {o.top_k} > {e} experts.")
        top1 = bb.family.moe.storage == "moduledict"  # switch: top-1 routers
        if top1 and o.top_k != 1:
            raise ConfigError(f"{alg.name}.top_k = {o.top_k}, but Switch Transformers route "
                              f"each token to one expert: set {alg.name}.top_k = 1.")
        for _, rt in M.moe_layers(bb):
            rt.top_k = o.top_k
        _attention_lora(alg, model)
        scale = m.scale
        M.add_expert_lora(bb, o.expert_lora_rank, scale * o.expert_lora_rank, alg.env.seed + 1)
        M.add_shared_lora(bb, o.expert_lora_rank, scale * o.expert_lora_rank, alg.env.seed + 2)
        for _, rt in M.moe_layers(bb):
            M.router_weight(rt).requires_grad_(True)

    def all_held(self, model):
        from fedfm.models.hf.moe import moe_layers

        return [list(rt.fedfm_ids) for _, rt in moe_layers(model)]

    def layer_ids(self, model) -> list[int]:
        """Block index of each MoE block (dense blocks skipped)."""
        from fedfm.models.hf.moe import moe_layer_ids

        return moe_layer_ids(model)

    def build(self, model, held):
        from fedfm.models.hf.moe import cut

        return cut(model, held)

    def client_model(self, model, held):
        return self.build(model, held)

    def aux(self, model):
        from fedfm.models.hf.moe import aux_loss

        return aux_loss(model)

    def extra_loss(self, model, coef: float):
        """coef · balance + c_z · router z-loss, c_z = the family's `router_z_loss_coef` (Switch
        Transformers' own training adds it; 0 for families that define none): None if both 0."""
        from fedfm.models.hf.moe import z_coef, z_loss

        cz = z_coef(model)
        if not coef and not cz:
            return None
        return lambda: (coef * self.aux(model) if coef else 0.0) + (
            cz * z_loss(model) if cz else 0.0)

    def loads(self, model):
        from fedfm.models.hf.moe import loads

        return loads(model)

    def memory(self, model) -> MemoryModel:
        from fedfm.models.hf.moe import expert_costs

        costs = expert_costs(model, submodel_memory)
        return MemoryModel(submodel_memory(model) - sum(map(sum, costs)), costs)


def _attention_lora(alg, model) -> None:
    m = alg.env.finetune
    freeze(model.backbone)
    try:
        inject_lora(model.backbone, m.targets, m.rank, m.alpha, alg.env.seed)
    except ValueError:
        raise ConfigError(f"model.lora_targets {list(m.targets)} match no attention "
                          "layer of the MoE model (e.g. query, value).") from None


def backend_for(model):
    """HFMoE for a Hugging Face MoE family, MoEfiedBert for a dense BERT-family encoder."""
    fam = model.backbone.family
    if getattr(fam, "moe", None) is not None:
        return HFMoE()
    first = model.backbone.blocks[0]
    if getattr(first, "is_fedfm_moe", False) or hasattr(first, "intermediate"):
        return MoEfiedBert()
    raise ConfigError(
        f"fedmoe/randommoe on a Hugging Face model need an MoE family (mixtral, qwen2_moe, "
        f"qwen3_moe, olmoe, deepseek_v2, deepseek_v3, switch_transformers) or a BERT-family "
        f"encoder to MoEfy; '{fam.name}' is neither (it is dense). Upcycle "
        "a dense Llama-style LM first (`fedfm upcycle --model hf --path DIR --out MOE_DIR`) or "
        "use model.name = \"minilm-l6\" (MoEfication).")
