"""verl 0.9.1 reads an envfactory verl export: the shipped command through main_ppo's own config
validation, the tool YAML through `initialize_tools_from_config`, the parquet files through
`RLHFDataset`, and the reward key through `get_custom_reward_fn`.

    python verl_check.py EXPORT_DIR MODEL_DIR WORK_DIR

MODEL_DIR is a local tokenizer + model (tiny_model.py), named as the user would name theirs
(`actor_rollout_ref.model.path=...`). Prints one JSON object (last line).
"""

from __future__ import annotations

import sys
from pathlib import Path

import verl_common


def _validated(export: Path, model: Path, work: Path) -> tuple[object, dict]:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass

    config, argv = verl_common.main_ppo_config(export, [f"actor_rollout_ref.model.path={model}"], work / "shipped")
    OmegaConf.resolve(config)  # as TaskRunner.run does before building the trainer
    # the dataclasses verl's workers build from the config: their __post_init__ checks run here
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    n_gpus = config.trainer.n_gpus_per_node * config.trainer.nnodes
    actor.validate(n_gpus, config.data.train_batch_size, config.actor_rollout_ref.model)
    model_cfg = omega_conf_to_dataclass(config.actor_rollout_ref.model)
    reward = config.reward  # verl reads it as a DictConfig (load_reward_manager, get_custom_reward_fn)
    return config, {
        "argv": argv,
        "use_critic": need_critic(config), "use_reference_policy": need_reference_policy(config),
        "rollout": {"name": rollout.name, "prompt_length": rollout.prompt_length,
                    "response_length": rollout.response_length,
                    "max_tool_response_length": rollout.multi_turn.max_tool_response_length,
                    "max_assistant_turns": rollout.multi_turn.max_assistant_turns,
                    "format": rollout.multi_turn.format, "tool_config_path": rollout.multi_turn.tool_config_path},
        "data": {k: config.data[k] for k in ("max_prompt_length", "max_response_length", "train_files",
                                             "val_files", "tool_config_path", "filter_overlong_prompts")},
        "model_type": model_cfg.hf_config.model_type,
        "reward_function": {"path": reward.custom_reward_function.path, "name": reward.custom_reward_function.name},
        "reward_manager": reward.reward_manager.name,
    }


def _tools(config) -> dict:
    from verl.tools.base_tool import BaseTool
    from verl.tools.tool_registry import initialize_tools_from_config

    tools = initialize_tools_from_config(config.actor_rollout_ref.rollout.multi_turn.tool_config_path)
    return {"tools": [{"name": t.name, "class": f"{type(t).__module__}.{type(t).__qualname__}",
                       "is_base_tool": isinstance(t, BaseTool),
                       "schema": t.tool_schema.model_dump(exclude_unset=True, exclude_none=True)} for t in tools]}


def _dataset(config) -> dict:
    import pyarrow.parquet as pq
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils import hf_tokenizer
    from verl.utils.tokenizer import normalize_token_ids

    tokenizer = hf_tokenizer(config.actor_rollout_ref.model.path)
    out = {"splits": {}}
    for split, path in (("train", config.data.train_files), ("test", config.data.val_files)):
        ds = create_rl_dataset(path, config.data, tokenizer, None, is_train=split == "train")
        parquet = pq.read_table(path).to_pylist()
        by_id = {r["extra_info"]["task_id"]: r for r in parquet}
        schemas = {s["function"]["name"]: s for s in ds.tool_schemas or []}
        rows = []
        for i in range(len(ds)):
            item = ds[i]
            info = item["extra_info"]
            selection = info.get("tool_selection")  # absent or empty: verl lists every tool
            selected = [schemas[n] for n in selection or schemas]
            count = lambda tools: len(normalize_token_ids(tokenizer.apply_chat_template(
                list(item["raw_prompt"]), tools=tools, add_generation_prompt=True, tokenize=True)))
            rows.append({"task_id": info["task_id"], "agent_name": item["agent_name"],
                         "raw_prompt_is_parquet_prompt": list(item["raw_prompt"]) == by_id[info["task_id"]]["prompt"],
                         "tool_selection": selection and list(selection), "tools_kwargs": sorted(item["tools_kwargs"]),
                         "tokens_all_tools": count(list(schemas.values())), "tokens_selected_tools": count(selected)})
        out["splits"][split] = {"parquet_rows": len(parquet), "dataset_rows": len(ds),
                                "dataset_tool_schemas": len(schemas), "rows": rows}
    return out


def _legacy_reward_key(export: Path, model: Path, work: Path) -> dict:
    """The key the export used to set (top-level `custom_reward_function`), given instead of
    `reward.custom_reward_function`: what verl does with it."""
    from hydra.core.global_hydra import GlobalHydra
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.reward_score import default_compute_score

    GlobalHydra.instance().clear()
    legacy = [f"actor_rollout_ref.model.path={model}", "reward.custom_reward_function.path=null",
              f"custom_reward_function.path={export / 'reward.py'}", "custom_reward_function.name=compute_score"]
    config, _ = verl_common.main_ppo_config(export, legacy, work / "legacy")
    try:
        default_compute_score("trip_planning-env", "{}", "{}")
        fallback = "scored"
    except NotImplementedError as e:
        fallback = f"NotImplementedError: {e}"
    return {"custom_reward_fn_loaded": get_custom_reward_fn(config) is not None, "builtin_fallback": fallback}


def main(argv: list[str]) -> int:
    export, model, work = (Path(a).resolve() for a in argv)
    config, validated = _validated(export, model, work)
    result = {"validated": validated, **_tools(config), "dataset": _dataset(config),
              "legacy_reward_key": _legacy_reward_key(export, model, work)}
    verl_common.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
