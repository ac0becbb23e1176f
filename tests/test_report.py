"""Report helpers: mean ± std over seeds, and the index page."""

import pandas as pd
import pytest

from deltaenergy.report import format_mean_std, mean_std, write_index


def test_mean_std_over_seeds():
    frame = pd.DataFrame({"method": ["a", "a", "a", "z"], "seed": [1, 2, 3, 0], "acc": [0.5, 0.6, 0.7, 0.4]})
    out = mean_std(frame, ["method"], "acc").set_index("method")
    assert out.loc["a", "mean"] == pytest.approx(0.6) and out.loc["a", "std"] == pytest.approx(0.1)
    assert out.loc["z", "std"] == 0.0 and out.loc["z", "n"] == 1
    assert list(format_mean_std(out.reset_index())) == ["60.0 ± 10.0", "40.0"]


def test_index_links_reports_and_flags_the_standin(tmp_path):
    prov = {"benchmark": "demo", "config_sha256": "x" * 64, "git": {"commit": "abc", "dirty": True},
            "backbone": {"name": "standin-conse"}, "device": {"cuda": False}, "seeds": {}, "image_encoder_calls": 5,
            "images": 5, "packages": {"torch": "2"}, "debian_data_packages": {}}
    write_index(tmp_path / "index.html", {"detection_table": "Detection <table>"}, prov)
    page = (tmp_path / "index.html").read_text()
    assert 'href="detection_table.html"' in page and "Detection &lt;table&gt;" in page
    assert "stand-in for CLIP" in page and "uncommitted changes" in page
    assert "<h2>Figures</h2>" not in page
    write_index(tmp_path / "index.html", {"radar": "Fig. 1C"}, prov, {"figures/radar.png": "Radar <of> methods"})
    page = (tmp_path / "index.html").read_text()
    assert '<li><a href="figures/radar.png">radar</a>: Radar &lt;of&gt; methods</li>' in page


def test_save_figure_writes_a_png_and_the_banner_names_the_standin(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from deltaenergy.report import save_figure, standin_banner

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "f" / "x.png")
    assert Image.open(tmp_path / "f" / "x.png").format == "PNG"
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["x.png"]
    assert "standin-conse" in standin_banner({"backbone": {"name": "standin-conse"}})
    assert standin_banner({"backbone": {"name": "openclip"}}) is None and standin_banner(None) is None


def _detection(values):
    """Rows (method, shots, seed, score, dataset, auroc, fpr95) from {(method, seed): (auroc_set1, auroc_set2)}."""
    rows = []
    for (method, seed), aurocs in values.items():
        for dataset, auroc in zip(["set1", "set2"], aurocs):
            rows.append({"method": method, "shots": 16, "seed": seed, "score": "delta_energy", "dataset": dataset,
                         "auroc": auroc, "fpr95": 1 - auroc})
    return pd.DataFrame(rows)


def test_paired_comparison_counts_seeds_in_the_metric_direction():
    from deltaenergy.report import paired_comparison

    per_run = pd.DataFrame({"method": ["ebm"] * 3 + ["coop"] * 3, "shots": [16] * 6, "seed": [1, 2, 3] * 2,
                            "auroc": [0.8, 0.6, 0.9, 0.7, 0.7, 0.7]})
    out = paired_comparison(per_run, "auroc", "ebm", "coop", "auroc").iloc[0]
    assert out["ebm"] == pytest.approx(0.7667, abs=1e-4) and out["coop"] == pytest.approx(0.7)
    assert out["difference"] == pytest.approx(0.0667, abs=1e-4) and out["a_better"] == 2 and out["seeds"] == 3
    fpr = per_run.assign(fpr95=1 - per_run["auroc"])
    assert paired_comparison(fpr, "fpr95", "ebm", "coop", "fpr95").iloc[0]["a_better"] == 2  # lower is better


def test_detection_summary_states_the_winner_from_the_numbers():
    from deltaenergy.report import detection_summary

    # ebm: mean over sets 0.85/0.80 (seeds), coop 0.60/0.62: ebm wins clearly; per set ebm wins set1, coop set2.
    lines = detection_summary(_detection({("ebm", 1): (0.95, 0.75), ("ebm", 2): (0.9, 0.7),
                                          ("coop", 1): (0.4, 0.8), ("coop", 2): (0.44, 0.8)}))
    assert lines[0] == ("At 16-shot, the best detector by mean AUROC over the OOD sets is ebm with delta_energy "
                        "(82.5 ± 3.5 %); runner-up coop with delta_energy (61.0 ± 1.4 %), clearly ahead.")
    assert lines[1] == ("delta_energy, 16-shot: ebm 82.5 % vs coop 61.0 % AUROC (difference +21.5 points); "
                        "ebm is better in 2 of 2 seeds.")
    assert lines[2] == "Per OOD set with delta_energy, 16-shot: ebm wins 1 (set1); coop wins 1 (set2)."
    fpr = detection_summary(_detection({("ebm", 1): (0.95, 0.75), ("coop", 1): (0.4, 0.8)}), metric="fpr95")
    assert fpr[0].startswith("At 16-shot, the best detector by mean FPR95 over the OOD sets is ebm")


def test_generalization_summary_within_noise():
    from deltaenergy.report import generalization_summary

    acc = pd.DataFrame({"method": ["coop", "coop", "ebm", "ebm"], "shots": 4, "seed": [1, 2, 1, 2],
                        "dataset": "fmnist", "role": "id", "acc": [0.40, 0.30, 0.36, 0.36]})
    assert generalization_summary(acc) == [
        "ID test, 4-shot: ebm is most accurate (36.0 ± 0.0 %), within seed noise of coop (35.0 ± 7.1 %)."]


def _notebook(path, body: str):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("word = 'default'", metadata={"tags": ["parameters"]}), new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_render_notebook_injects_parameters_and_writes_html_without_code(tmp_path):
    from deltaenergy.notebooks import main

    source = _notebook(tmp_path / "nb.ipynb", "print('the word is ' + word.upper())")
    main([str(source), str(tmp_path / "out" / "nb.ipynb"), str(tmp_path / "out" / "nb.html"), '{"word": "radar"}'])
    html = (tmp_path / "out" / "nb.html").read_text()
    assert "the word is RADAR" in html and "word.upper()" not in html  # output shown, code hidden (--no-input)


def test_render_notebook_failure_leaves_no_html_and_bad_parameters_are_named(tmp_path):
    import papermill

    from deltaenergy.notebooks import main

    source = _notebook(tmp_path / "nb.ipynb", "raise ValueError('no ' + word)")
    with pytest.raises(papermill.PapermillExecutionError, match="no shots"):
        main([str(source), str(tmp_path / "nb.out.ipynb"), str(tmp_path / "nb.html"), '{"word": "shots"}'])
    assert (tmp_path / "nb.out.ipynb").exists() and not (tmp_path / "nb.html").exists()
    assert not list(tmp_path.glob(".nb.html*"))  # no temporary file left either
    with pytest.raises(SystemExit, match="parameters of .*nb.ipynb are not JSON"):
        main([str(source), str(tmp_path / "x.ipynb"), str(tmp_path / "x.html"), "{word: }"])
