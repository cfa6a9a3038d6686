"""sa-serve --ray's options, checked before Ray starts (no Ray needed): replica counts fixed, by
the cluster's GPUs, or autoscaled; contradictions and impossible counts named; a missing Ray one
clear line; a Serve config file's args turned into sa-serve's command line."""

import socket
import sys

import pytest

from stable_audio_rt.serve import cli
from stable_audio_rt.serve.ray_options import (
    JOBS_AND_REQUESTS_POLICY,
    most_replicas,
    options_to_argv,
    replica_count_options,
)


def _scaling(low: int, high: int, target: int, **delays: float) -> dict:
    policy = {"policy_function": JOBS_AND_REQUESTS_POLICY}
    scaling = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target, "policy": policy}
    return {"autoscaling_config": scaling | delays}


def _args(*argv: str):
    return cli.build_parser().parse_args(["--ray", *argv])


@pytest.mark.parametrize(
    "argv,gpus,expected",
    [
        ([], 0, {"num_replicas": 1}),
        ([], 4, {"num_replicas": 4}),  # one per GPU
        (["--replicas", "3"], 8, {"num_replicas": 3}),
        (["--max-replicas", "6"], 0,
         _scaling(1, 6, 4)),
        (["--min-replicas", "1", "--max-replicas", "2", "--max-batch", "8"], 0,
         _scaling(1, 2, 8)),
        (["--min-replicas", "2"], 0,
         _scaling(2, 2, 4)),
        (["--max-replicas", "3", "--upscale-delay-s", "5"], 0,
         _scaling(1, 3, 4, upscale_delay_s=5.0)),
        (["--max-replicas", "3", "--upscale-delay-s", "0", "--downscale-delay-s", "120"], 0,
         _scaling(1, 3, 4, upscale_delay_s=0.0, downscale_delay_s=120.0)),
    ],
)  # fmt: skip
def test_replica_counts(argv, gpus, expected):
    options = replica_count_options(_args(*argv), gpus)
    assert options == expected
    scaling = expected.get("autoscaling_config", {})
    assert most_replicas(options) == scaling.get("max_replicas", expected.get("num_replicas"))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--replicas", "2", "--max-replicas", "4"], "--replicas is a fixed count"),
        (["--replicas", "2", "--min-replicas", "1"], "--replicas is a fixed count"),
        (["--replicas", "0"], "--replicas must be at least 1, got 0"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--max-replicas (2) must be at least"),
        (["--min-replicas", "0", "--max-replicas", "2"], "--min-replicas must be at least 1"),
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--upscale-delay-s", "5"], "--upscale-delay-s applies to autoscaling"),
        (["--replicas", "2", "--downscale-delay-s", "5"], "--downscale-delay-s applies to autoscaling"),
        (["--max-replicas", "2", "--upscale-delay-s", "-1"], "--upscale-delay-s must be a number of seconds"),
        (["--max-replicas", "2", "--downscale-delay-s", "nan"], "of at least 0, got nan"),
        (["--replica-cpus", "nan"], "--replica-cpus must be a number of CPUs above 0, got nan"),
        (["--replica-cpus", "0"], "--replica-cpus must be a number of CPUs above 0, got 0"),
        (["--host", "nosuch.invalid"], "--host nosuch.invalid: not an address this machine has"),
    ],
)
def test_bad_ray_options_are_refused_before_ray_starts(argv, message, capsys, monkeypatch):
    import stable_audio_rt.serve.ray_serve as ray_serve  # Ray is there: its start is refused

    monkeypatch.setattr(ray_serve, "serve_on_ray", lambda *a: pytest.fail("Ray was started"))
    assert cli.main(["--ray", "--model", "tiny-random", *argv]) == 2
    assert message in capsys.readouterr().err


def test_what_the_local_replicas_would_refuse_is_refused_before_ray_starts(capsys, monkeypatch):
    import stable_audio_rt.serve.ray_serve as ray_serve

    monkeypatch.setattr(ray_serve, "serve_on_ray", lambda *a: pytest.fail("Ray was started"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert cli.main(["--ray", "--model", "tiny-random", "--port", port]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert cli.main(["--ray", "--model", "/nonexistent/model"]) == 2
    assert "/nonexistent/model is neither an existing file or folder" in capsys.readouterr().err


def test_without_ray_sa_serve_ray_is_one_clear_line(capsys, monkeypatch):
    import stable_audio_rt.serve as package

    monkeypatch.setitem(sys.modules, "stable_audio_rt.serve.ray_serve", None)  # its import fails
    monkeypatch.delattr(package, "ray_serve", raising=False)  # as if never imported
    assert cli.main(["--ray", "--model", "tiny-random"]) == 2
    err = capsys.readouterr().err
    assert "sa-serve --ray needs Ray Serve" in err and "pip install 'stable-audio-rt[ray]'" in err
    assert "Traceback" not in err


def test_a_config_files_args_are_sa_serves_options():
    argv = options_to_argv(
        {"model": "m", "max_batch": 4, "no_cuda_graph": True, "api_key": None, "job_timeout_s": 60.0,
         "ray": False}
    )  # fmt: skip
    assert argv == ["--model", "m", "--max-batch", "4", "--no-cuda-graph", "--job-timeout-s", "60.0"]
    args = cli.build_parser().parse_args(argv)
    assert (args.model, args.max_batch, args.no_cuda_graph, args.job_timeout_s) == ("m", 4, True, 60.0)


@pytest.mark.parametrize(
    "argv,named",
    [
        (["--max-replicas", "4"], "--max-replicas is an option of sa-serve --ray"),
        (
            ["--replicas", "2", "--upscale-delay-s", "1"],
            "--replicas, --upscale-delay-s are options of sa-serve --ray",
        ),
        (["--replica-cpus", "2"], "--replica-cpus is an option of sa-serve --ray"),
    ],
)
def test_ray_options_without_ray_are_refused_before_the_model_loads(argv, named, capsys, monkeypatch):
    monkeypatch.setattr(cli, "loaded", lambda args: pytest.fail("the model was loaded"))
    assert cli.main(["--model", "tiny-random", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and "add --ray" in err
