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
