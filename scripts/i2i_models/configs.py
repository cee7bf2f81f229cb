"""config.json contents as real diffusers / optimum exports write them (trimmed to what matters)."""

from __future__ import annotations

import json

DIFFUSERS_VERSION = "0.27.2"


def dump(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def model_index(scheduler_class: str, vae_class: str) -> str:
    return dump({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", vae_class],
    })


_SCALED_LINEAR = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "trained_betas": None,
}


def scheduler_config(kind: str) -> str:
    if kind == "pndm":  # SD 1.5
        cfg = {"_class_name": "PNDMScheduler", "clip_sample": False, "set_alpha_to_one": False,
               "skip_prk_steps": True, "steps_offset": 1, **_SCALED_LINEAR}
    elif kind == "euler":  # sd-turbo
        cfg = {"_class_name": "EulerDiscreteScheduler", "clip_sample": False, "interpolation_type": "linear",
               "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
               "sigma_max": None, "sigma_min": None, "skip_prk_steps": True, "steps_offset": 1,
               "timestep_spacing": "trailing", "timestep_type": "discrete", "use_karras_sigmas": False,
               **_SCALED_LINEAR}
    elif kind == "lcm":  # LCM-distilled SD 1.5 (e.g. LCM Dreamshaper)
        cfg = {"_class_name": "LCMScheduler", "clip_sample": False, "clip_sample_range": 1.0,
               "dynamic_thresholding_ratio": 0.995, "original_inference_steps": 50, "prediction_type": "epsilon",
               "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "set_alpha_to_one": True,
               "steps_offset": 1, "thresholding": False, "timestep_scaling": 10.0,
               "timestep_spacing": "leading", **_SCALED_LINEAR}
    else:
        raise ValueError(kind)
    cfg["_diffusers_version"] = DIFFUSERS_VERSION
    return dump(cfg)


def text_encoder_config(hidden: int, layers: int, heads: int, intermediate: int, dtype: str) -> str:
    # bos/eos/pad ids here are the (wrong) ones real SD exports carry; the tokenizer files are the truth.
    return dump({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": hidden,
        "torch_dtype": dtype,
        "transformers_version": "4.40.0",
        "vocab_size": 49408,
    })


def unet_config(cross_dim: int, sample_size: int, block_out: list[int], head_dim, extra=None) -> str:
    cfg = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "block_out_channels": block_out,
        "center_input_sample": False,
        "cross_attention_dim": cross_dim,
        "down_block_types": ["CrossAttnDownBlock2D"] * (len(block_out) - 1) + ["DownBlock2D"],
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": sample_size,
        "time_cond_proj_dim": None,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(block_out) - 1),
    }
    if extra:
        cfg.update(extra)
    return dump(cfg)


def vae_kl_config(scaling_factor: float, sample_size: int, block_out: list[int]) -> str:
    return dump({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": block_out,
        "down_block_types": ["DownEncoderBlock2D"] * len(block_out),
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out),
    })


def vae_tiny_config(channels: int) -> str:
    return dump({
        "_class_name": "AutoencoderTiny",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "relu",
        "decoder_block_out_channels": [channels] * 4,
        "encoder_block_out_channels": [channels] * 4,
        "force_upcast": False,
        "in_channels": 3,
        "latent_channels": 4,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "num_decoder_blocks": [1, 1, 1, 1],
        "num_encoder_blocks": [1, 1, 1, 1],
        "out_channels": 3,
        "scaling_factor": 1.0,
        "upsampling_scaling_factor": 2,
    })
