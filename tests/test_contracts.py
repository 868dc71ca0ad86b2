"""What the engine asks of steps and executors: the LLM clients and retriever a step declares,
and the executor contract every executor satisfies."""

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from rare.errors import ConfigError
from rare.executors import build_executor
from rare.executors.contract import Executor
from rare.executors.local.executor import LocalExecutor
from rare.executors.local.workers import WorkerPool
from rare.pipeline.build import build_steps


def test_steps_declare_every_client_they_call_through_and_their_retriever(tmp_path):
    cfg = compose_config(tmp_path, "llm=openai", "preset=full", "steps.verify.samples=3")
    steps = dict(build_steps(cfg.steps))
    doc2query, hardneg, teacher, verify = (
        steps[name] for name in ("doc2query", "bm25_hardneg", "reason_distill", "verify")
    )
    assert doc2query.clients() == [doc2query.llm] and doc2query.retrievers() == []
    assert hardneg.clients() == [] and hardneg.retrievers() == [hardneg.retriever]
    assert teacher.clients() == [teacher.llm]
    # the judge first, then the teacher copy it samples more paths from (a client of its own)
    assert verify.clients() == [verify.llm, verify.teacher.llm] and verify.teacher.llm is not verify.llm
    assert "export" not in steps and steps["doc_filter"].retrievers() == []  # the export is a writer, not a step


def test_a_judge_without_extra_samples_declares_only_itself(tmp_path):
    verify = dict(build_steps(compose_config(tmp_path, "llm=openai", "preset=full").steps))["verify"]
    assert verify.teacher is None and verify.clients() == [verify.llm]


def test_the_local_executor_and_the_worker_pool_are_executors():
    assert isinstance(LocalExecutor(), Executor)
    assert isinstance(WorkerPool(2), Executor)
    assert isinstance(build_executor(None), LocalExecutor)


def test_the_ray_executor_is_an_executor():
    pytest.importorskip("ray")
    from rare.executors.ray.executor import RayExecutor

    assert isinstance(RayExecutor(), Executor)  # built without joining or starting a cluster


def test_a_target_that_is_no_executor_is_refused_with_what_it_lacks():
    with pytest.raises(ConfigError, match=r"executor builtins.dict is not an executor: it needs run_row_step"):
        build_executor(OmegaConf.create({"_target_": "builtins.dict"}))
