"""The atlas of every unit: its numbers against a brute-force pass and the deconvnet's own projections; the
command on a checkpoint and on a torchvision network, its site's every link and image, its W&B tables, its cache;
the callback; and (-m slow) the site opened in a real headless browser."""

from __future__ import annotations

import html.parser
import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
import torchvision
from torch.utils.data import TensorDataset

from tests.conftest import TINY_RUN, compose_config, compose_train, run_in_process
from tests.helpers.wandb_records import media_steps
from zfexp.analysis.activations import layer_activations
from zfexp.analysis.deconv import DeconvNet
from zfexp.analysis.geometry import receptive_field
from zfexp.analysis.top_k import TopActivationsResult
from zfexp.analysis.unit_crops import crop_tiles, tile_size
from zfexp.atlas import UnitChunk, layer_chunks, top_k_every_map
from zfexp.models import zfnet_small

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def random_net_and_images(n: int = 48) -> tuple[torch.nn.Module, TensorDataset]:
    torch.manual_seed(0)
    net = zfnet_small(num_classes=10, in_channels=1).eval()
    for module in net.modules():  # batch-norm statistics of their own, as a trained network has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    images = torch.randn(n, 1, 28, 28)
    return net, TensorDataset(images, torch.randint(0, 10, (n,)))


def test_the_units_of_a_map_are_its_brute_force_top_k_and_each_projection_is_the_deconvnets():
    net, dataset = random_net_and_images()
    images, labels = dataset.tensors
    cpu = torch.device("cpu")
    top = top_k_every_map(net, dataset, ["conv2", "conv5"], 9, cpu, batch_size=20)  # the top-k across batches
    deconv = DeconvNet(net)
    for name in ("conv2", "conv5"):  # chunks of 5 maps: the last one shorter (64 maps)
        chunks = list(layer_chunks(net, dataset, name, top[name], cpu, lambda x: x, True, name == "conv2", 5))
        assert [c.first for c in chunks] == list(range(0, 64, 5)) and chunks[-1].maps == 4
        layer = UnitChunk(name, 0, TopActivationsResult(**{k: torch.cat([vars(c.top)[k] for c in chunks])
                                                           for k in vars(top[name])}),
                          *(torch.cat([getattr(c, k) for c in chunks])
                            for k in ("projections", "crops", "predicted", "labels")), None)
        filters = torch.cat([c.filters for c in chunks]) if name == "conv2" else None
        if filters is not None:
            assert torch.equal(filters, net.conv2.weight.detach())
        acts = layer_activations(net, images, [name])[name]  # [N, K, H, W]
        per_image, where = acts.flatten(2).max(2)  # [N, K]: each image counts once per map, at its maximum
        values, order = per_image.sort(dim=0, descending=True)
        assert layer.maps == acts.shape[1] and layer.top.channels.tolist() == list(range(acts.shape[1]))
        torch.testing.assert_close(layer.top.values, values[:9].T)  # the 9 highest, in order
        torch.testing.assert_close(per_image.gather(0, layer.top.indices.T).T, layer.top.values)  # held by those
        assert all(len(set(row.tolist())) == 9 for row in layer.top.indices)  # 9 images, each once
        untied = (values[:10].diff(dim=0) != 0).all(0)  # maps whose 10 strongest differ (a dead map ties at 0)
        assert untied.sum() > layer.maps // 2 and torch.equal(layer.top.indices[untied], order[:9].T[untied])
        assert torch.equal(layer.labels, labels[layer.top.indices])
        with torch.no_grad():
            assert torch.equal(layer.predicted, net(images).argmax(1)[layer.top.indices])
        size = tile_size(net, name, images)
        for j in range(0, layer.maps, 7):
            for r in (0, 4, 8):
                index = int(layer.top.indices[j, r])
                row, col = divmod(int(where[index, j]), acts.shape[-1])
                assert layer.top.positions[j, r].tolist() == [row, col]
                box = receptive_field(net, name, (row, col), (28, 28))
                projection = deconv.project(images[index:index + 1], name, [j])[0]  # [1, C, H, W]
                torch.testing.assert_close(layer.projections[j, r], crop_tiles(projection, [box], size)[0],
                                           rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(layer.crops[j, r], crop_tiles(images[index:index + 1], [box], size)[0])


class Links(html.parser.HTMLParser):
    """Every ``href`` and ``src`` of a page."""

    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "img":
            self.srcs.append(attrs["src"])


def site_links(site: Path) -> tuple[int, int]:
    """Check that every link and image of every page under ``site`` is a file of the site (PNGs non-empty and
    decodable); return the counts of links and images."""
    from PIL import Image

    links = images = 0
    for page in site.rglob("*.html"):
        parser = Links()
        parser.feed(page.read_text())
        for ref in parser.hrefs + parser.srcs:
            assert not urlparse(ref).scheme and not ref.startswith("/"), (page, ref)  # relative: opens from disk
            target = (page.parent / unquote(ref)).resolve()
            assert target.is_file() and target.is_relative_to(site.resolve()), (page, ref)
        for src in parser.srcs:
            with Image.open(page.parent / unquote(src)) as image:
                assert min(image.size) > 0
        links, images = links + len(parser.hrefs), images + len(parser.srcs)
    return links, images


def test_the_command_on_a_checkpoint_writes_a_page_for_every_map_its_tables_and_reuses_its_pass(
        tiny_checkpoint, tmp_path, caplog):
    from zfexp.atlas.__main__ import atlas

    cache = tmp_path / "cache"
    overrides = [f"ckpt_path={tiny_checkpoint}", "max_images=200", f"cache_dir={cache}"]
    record = atlas(compose_config("atlas", tmp_path / "run", overrides))
    site = tmp_path / "run" / "atlas"
    widths = {"conv1": 8, "conv2": 16, "conv3": 16, "conv4": 16, "conv5": 16}  # the tiny run's
    assert record["status"] == "completed" and record["layers"] == widths
    for layer, maps in widths.items():
        assert sorted(p.name for p in (site / layer).glob("map_*.html")) == [f"map_{j:04d}.html" for j in range(maps)]
        assert len(list((site / layer / "img").glob("unit_*_patch.png"))) == 9 * maps
    assert len(list((site / "conv1" / "img").glob("filter_*.png"))) == 8  # the first conv shows its filters
    links, images = site_links(site)
    assert images == sum(widths.values()) * (1 + 18) + 8 and links > 3 * sum(widths.values())
    summary = json.loads((site / "atlas.json").read_text())
    unit = summary["layers"]["conv5"]["maps"][3]["units"][0]
    assert set(unit) == {"image", "activation", "position", "predicted", "true"}
    assert unit["true"] in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                            "Bag", "Ankle boot")
    # The map page shows each unit's activation and class names; the index, the run's config and metrics.
    page = (site / "conv5" / "map_0003.html").read_text()
    assert f"activation {unit['activation']:.4g}" in page and f"true: {unit['true']}" in page
    assert 'href="map_0002.html"' in page and 'href="map_0004.html"' in page and 'href="index.html"' in page
    index = (site / "index.html").read_text()
    assert "The run's config</h2>" in index and "task_name: train" in index  # the training run's config.yaml
    assert "The run's metrics</h2>" in index and "<th>train/top1_err</th>" in index
    # A W&B table per layer, image cells included; a CSV of the numbers.
    (wandb_file,) = (tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb")
    assert set(media_steps(wandb_file)) == {f"atlas/{layer}" for layer in widths}
    assert (tmp_path / "run" / "tables" / "atlas_conv5.csv").read_text().count("\n") == 1 + 16
    key = record["cache_key"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"top9_{key}_{layer}.pt" for layer in widths)

    # Another atlas of the same network and images reads the layers it asks for from the cache: the same units.
    caplog.set_level("INFO")
    again = atlas(compose_config("atlas", tmp_path / "again", [*overrides, "layers=[conv5,conv2]", "logger=csv"]))
    assert again["cache_key"] == key and "the top-9 of every map of conv5, conv2 read from" in caplog.text
    assert json.loads((tmp_path / "again" / "atlas" / "atlas.json").read_text())["layers"] == {
        layer: summary["layers"][layer] for layer in ("conv5", "conv2")}
    # Other images (50 of the split's, another 50), another top-k: a key of their own each, a pass each.
    keys = {key}
    for other in (["max_images=50"], ["max_images=50", "seed=1"], ["top_k=4"]):
        changed = atlas(compose_config("atlas", tmp_path / "_".join(other), [*overrides, *other, "logger=csv",
                                                                            "layers=[conv1]"]))
        assert changed["cache_key"] not in keys, other
        keys.add(changed["cache_key"])


def test_a_layer_that_cannot_be_drawn_stops_before_any_work(tiny_checkpoint, tmp_path):
    code, stderr = run_in_process("zfexp.atlas", f"ckpt_path={tiny_checkpoint}", "layers=[fc6]",
                                  f"hydra.run.dir={tmp_path / 'run'}", "logger=csv")
    assert code == 1 and "Traceback" not in stderr
    assert "Error: layers: layer='fc6' is not a conv layer of the model; valid: conv1, conv2, conv3, conv4, conv5, " \
           "or a block" in stderr, stderr
    assert not (tmp_path / "run" / "atlas").exists()


def test_a_torchvision_network_with_named_weights_gets_its_atlas_with_imagenet_class_names(cached_resnet18, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(load_sample_images().images):
        Image.fromarray(image).save(photos / f"{i}.jpg")
    out = tmp_path / "run"
    code, stderr = run_in_process("zfexp.atlas", "network=resnet18", "weights=DEFAULT", f"images={photos}",
                                  "input.resize=64", "input.crop=64", "top_k=2", "logger=csv",
                                  "layers=[conv1,layer2.0.conv1]",  # two of the five zfexp.analyze draws (time)
                                  f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}")
    assert code == 0, stderr
    record = json.loads((out / "atlas.json").read_text())
    net = torchvision.models.resnet18()  # every map of each layer
    assert record["layers"] == {"conv1": 64, "layer2.0.conv1": net.layer2[0].conv1.out_channels}
    links, images = site_links(out / "atlas")
    maps = sum(record["layers"].values())
    assert images == maps * (1 + 2 * 2) + 64 and links > 3 * maps  # a tile, 2 patches and 2 projections a map
    names = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    summary = json.loads((out / "atlas" / "atlas.json").read_text())
    predicted = {u["predicted"] for layer in summary["layers"].values() for m in layer["maps"] for u in m["units"]}
    assert predicted <= set(names) and "true" not in summary["layers"]["conv1"]["maps"][0]["units"][0]


def test_the_callback_writes_the_atlas_at_the_end_of_fit(tmp_path):
    from zfexp.training import train

    run = tmp_path / "run"
    metrics = train(compose_train(run, ["experiment=quickstart", *TINY_RUN, "callbacks=[default,atlas]",
                                        "callbacks.atlas.layers=[conv1,conv5]", "callbacks.atlas.max_images=64",
                                        "test=false", "logger=csv"]))
    assert metrics["status"] == "completed"
    assert len(list((run / "atlas" / "conv1").glob("map_*.html"))) == 8
    assert len(list((run / "atlas" / "conv5").glob("map_*.html"))) == 16
    site_links(run / "atlas")
    assert (run / "tables" / "atlas_conv5_final.csv").is_file()
    index = (run / "atlas" / "index.html").read_text()
    assert "The run's config</h2>" in index and "<th>train/top1_err</th>" in index and "64 validation images" in index


@pytest.mark.slow
def test_the_site_opens_from_disk_in_a_headless_browser(tiny_checkpoint, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the browser extra: python3 bootstrap.py "
                                    "--dev --browser")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("needs Debian's chromium and chromium-driver: python3 bootstrap.py --dev --browser")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from zfexp.atlas.__main__ import atlas

    atlas(compose_config("atlas", tmp_path / "run", [f"ckpt_path={tiny_checkpoint}", "max_images=200", "logger=csv",
                                                     f"cache_dir={tmp_path / 'cache'}"]))
    site = tmp_path / "run" / "atlas"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        for name, page in (("index", site / "index.html"), ("layer", site / "conv5" / "index.html"),
                           ("map", site / "conv5" / "map_0003.html")):
            browser.get(page.as_uri())  # file://: from disk, no server
            WebDriverWait(browser, 20).until(lambda b: b.execute_script(
                "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
            images = browser.execute_script(
                "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])")
            assert all(width > 0 and height > 0 for _, width, height in images), (name, images)
            assert len(images) == {"index": 0, "layer": 16, "map": 18}[name]
            for href in browser.execute_script("return Array.from(document.links).map(a => a.href)"):
                assert urlparse(href).scheme == "file" and Path(unquote(urlparse(href).path)).is_file(), (name, href)
            browser.save_screenshot(str(tmp_path / f"{name}.png"))
            assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        # The links work as a person follows them: the next map, then back to the layer.
        browser.find_element(By.PARTIAL_LINK_TEXT, "map 4").click()
        assert browser.title == "conv5 map 4" and browser.current_url.endswith("conv5/map_0004.html")
        browser.find_element(By.LINK_TEXT, "conv5").click()
        assert browser.current_url.endswith("conv5/index.html")
    finally:
        browser.quit()


@pytest.mark.parametrize("layers, words", [("conv5", "give a list of layer names"), ([], "at least one layer"),
                                           (["conv1", "conv1"], "each once")])
def test_a_list_of_layers_that_is_no_list_empty_or_repeated_is_named_by_its_key(layers, words):
    from zfexp.atlas.units import check_layer_list
    from zfexp.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match=rf"^callbacks\.atlas\.layers=.*{words}"):
        check_layer_list("callbacks.atlas.layers", layers)
    check_layer_list("callbacks.atlas.layers", None)  # the defaults


def test_a_corrupt_cache_file_is_passed_over_with_a_warning_and_written_again(tmp_path, caplog):
    net, dataset = random_net_and_images(16)
    cpu = torch.device("cpu")
    first = top_k_every_map(net, dataset, ["conv1", "conv5"], 3, cpu, cache_dir=tmp_path, key="k")
    (tmp_path / "top3_k_conv5.pt").write_bytes(b"not a torch file")
    caplog.set_level("INFO")
    again = top_k_every_map(net, dataset, ["conv1", "conv5"], 3, cpu, cache_dir=tmp_path, key="k")
    assert "top3_k_conv5.pt cannot be read" in caplog.text and "of conv1 read from" in caplog.text
    assert all(torch.equal(vars(first[layer])[k], vars(again[layer])[k]) for layer in first for k in vars(first[layer]))
    assert torch.load(tmp_path / "top3_k_conv5.pt", weights_only=True)["values"].shape == (64, 3)  # rewritten
