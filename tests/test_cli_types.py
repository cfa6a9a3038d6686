"""The command-line tools' shared argument types."""

import pytest

from stable_audio_rt.bench import cli as bench_cli
from stable_audio_rt.export import cli as export_cli
from stable_audio_rt.runtime import cli as run_cli


@pytest.mark.parametrize(
    "main,argv",
    [
        (run_cli.main, ["x", "--model", "tiny-random", "--engines", ""]),
        (export_cli.main, ["--model", "tiny-random", "--out", ""]),
        (bench_cli.main, ["--engines", ""]),
    ],
    ids=["sa-run", "sa-export", "sa-bench"],
)
def test_an_empty_folder_is_refused_not_taken_for_the_current_folder(main, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "the folder is empty (an unset variable?): give its path" in err
