"""Flow-matching sampling as pure functions: schedules (schedule), the flow parameterization (flow),
samplers with ComfyUI's names (samplers), guidance (guidance) and seeded noise (noise). Imports only torch."""
