"""The scenario: one object, from the YAML file to every client."""

from __future__ import annotations

from pydantic import Field, PrivateAttr

from fedrecon.scenario.base import Strict
from fedrecon.scenario.sections import (AdaptersConfig, CheckpointsConfig, ClientsConfig, DataConfig,
                                        EvaluationConfig, FaultsConfig, FinetuneConfig, MergeConfig, ModelConfig,
                                        PrivacyConfig, SimulationConfig, TrackingConfig)
from fedrecon.scenario.tasks import TasksConfig
from fedrecon.scenario.sites import SitesConfig
from fedrecon.scenario.unknown import UnknownConfig


class Scenario(Strict):
    """A fedrecon scenario: who learns which classes when, and how the server merges."""

    name: str = Field(min_length=1, description="name of the run (and of its run folder)")
    seed: int = Field(0, ge=0, description="seed of every random choice of the plan")
    data: DataConfig = Field(default_factory=DataConfig, description="where the samples come from")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the shared feature extractor")
    clients: ClientsConfig = Field(description="who takes part, and when")
    tasks: TasksConfig | None = Field(None, description="classes, tasks, split, arrival and revisits (required "
                                                        "unless sites: each site's tasks are the data it gets)")
    sites: SitesConfig | None = Field(None, description="each client is a site with data of its own (null: the "
                                                        "plan deals the dataset's samples to the clients)")
    rounds: int | None = Field(None, ge=1, description="rounds to run; null: until the last arrival")
    merge: MergeConfig = Field(default_factory=MergeConfig, description="how the server merges")
    adapters: AdaptersConfig = Field(default_factory=AdaptersConfig, description="LoRA adapters fine-tuned by the clients")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="training of the fedavg_finetune baseline")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="when accuracy is measured")
    unknown: UnknownConfig = Field(default_factory=UnknownConfig, description="the exported model's threshold for unknown inputs")
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig,
                                           description="which rounds' states the run folder keeps (for export --round)")
    simulation: SimulationConfig = Field(default_factory=SimulationConfig, description="Flower simulation resources")
    faults: FaultsConfig = Field(default_factory=FaultsConfig, description="retries of failed tasks and injected faults")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="secure aggregation of the statistics")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="experiment trackers (MLflow, TensorBoard)")
    # where each key was in the file (errors found later, against the data, still point there)
    _source: object = PrivateAttr(None)
