"""The TrafficBots model: network (``traffic_bots``), closed-loop rollouts (``rollout``), the simulator's
policy API (``policy``), checkpoints (``checkpoint``) and reference-checkpoint import
(``reference_import``). See ``docs/model.md``."""
