"""Configuration: where the configs and shipped files live, type checks of a composed config, secret masking."""
