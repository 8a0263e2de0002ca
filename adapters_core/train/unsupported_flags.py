"""kohya ``train_network.py`` flags adapt recognises but does not implement (not TrainArgs fields).

:data:`UNSUPPORTED` names each with the reason, so a migrated command line or ``--config_file``
fails with a clear message instead of "no such option"; :data:`IGNORED_FLAGS` lists on/off flags
that change nothing here (accepted with a warning).
"""

from __future__ import annotations

# kohya flags adapt recognises but does not implement: flag -> why (shown to the user).
UNSUPPORTED: dict[str, str] = {
    **dict.fromkeys(
        [
            "huggingface_repo_id",
            "huggingface_repo_type",
            "huggingface_path_in_repo",
            "huggingface_token",
            "huggingface_repo_visibility",
            "save_state_to_huggingface",
            "resume_from_huggingface",
            "async_upload",
        ],
        "adapt never uploads or downloads; copy the files yourself",
    ),
    **dict.fromkeys(
        [
            "deepspeed",
            "zero_stage",
            "offload_optimizer_device",
            "offload_optimizer_nvme_path",
            "offload_param_device",
            "offload_param_nvme_path",
            "zero3_init_flag",
            "zero3_save_16bit_model",
            "fp16_master_weights_and_gradients",
        ],
        "DeepSpeed is not supported; use accelerate launch with DDP",
    ),
    **dict.fromkeys(["fp8_base", "fp8_base_unet"], "fp8 base weights are not supported"),
    **dict.fromkeys(["torch_compile", "dynamo_backend"], "torch.compile is not supported"),
    **dict.fromkeys(
        ["ddp_timeout", "ddp_gradient_as_bucket_view", "ddp_static_graph"], "DDP options are not supported"
    ),
    **dict.fromkeys(["wandb_run_name", "wandb_api_key"], "wandb is not supported; use --log_with tensorboard"),
    **dict.fromkeys(
        [
            "validation_split",
            "validation_seed",
            "validate_every_n_steps",
            "validate_every_n_epochs",
            "max_validation_steps",
        ],
        "validation splits are not supported yet",
    ),
    **dict.fromkeys(["initial_epoch", "initial_step", "skip_until_initial_step"], "use --resume with a saved state"),
    "vae": "a separate VAE file is not supported; the base model's VAE is used",
    "weighted_captions": "weighted captions are not supported",
    "conditioning_data_dir": "conditioning-image masks are not supported; use alpha_mask",
    "debug_dataset": "dataset debugging is not supported",
    "dataset_class": "custom dataset classes are not supported",
    "resize_interpolation": "the dataset always uses Lanczos/area resizing",
    "scale_weight_norms": "max-norm regularization is not supported yet",
    "fused_backward_pass": "fused backward passes are not supported",
    "cpu_offload_checkpointing": "CPU offload of checkpoints is not supported",
    "tokenizer_cache_dir": "models load offline; pass --tokenizer",
    "text_encoder_batch_size": "text-encoder outputs are cached in batches of the dataset's batch size",
    "blocks_to_swap": "block swapping is not supported",
}

# kohya on/off flags that change nothing in adapt: accepted with a warning.
IGNORED_FLAGS: dict[str, str] = {
    "lowram": "models are loaded to the CPU first anyway",
    "highvram": "adapt does not offload",
    "disable_mmap_load_safetensors": "not needed",
    "log_config": "the config is not sent to trackers",
    "use_safetensors": "adapters are saved as --save_model_as says",
}
