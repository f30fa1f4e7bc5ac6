"""The run configurations and deployment definitions of this folder (demo.yaml, prefect.yaml),
installed as package data of `flywheel.deployments` so that an installed `flywheel` finds them
(flows/commands/where.py `packaged`)."""
