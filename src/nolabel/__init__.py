"""nolabel: group images into clusters without labels, and measure how good those clusters are.

One namespace for every stage, each usable on its own:

    from nolabel import load_dataset, create_model, extract, PCA, KMeans, SCAN, evaluate, run

    store = extract("fashion-mnist:test", "efficientnet_lite0", "feats/test")   # a FeatureStore
    pred = KMeans(n_clusters=10).fit_predict(PCA(64).fit_transform(store.features))
    evaluate(store.labels, pred)                                  # scikit-learn's argument order
    summary = run(load_config("configs/digits.yaml"))             # the main job, stage by stage
    clustering = load_clustering("runs/digits/cluster")           # any method's clustering
    clusters, confidence = assign(clustering, new_features)

Names are imported on first use, so `import nolabel` (and the command line) starts fast.
"""

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "load_dataset": ("nolabel.data", "load"),
    "create_model": ("nolabel.models", "create"),
    "list_models": ("nolabel.models", "list_models"),
    "extract": ("nolabel.features", "extract"),
    "ExtractOptions": ("nolabel.features", "ExtractOptions"),
    "FeatureStore": ("nolabel.store", "FeatureStore"),
    "PCA": ("nolabel.cluster.pca", "PCA"),
    "KMeans": ("nolabel.cluster.kmeans", "KMeans"),
    "SCAN": ("nolabel.cluster.scan.estimator", "SCAN"),
    "TURTLE": ("nolabel.cluster.turtle", "TURTLE"),
    "load_clustering": ("nolabel.clustering", "load_clustering"),
    "assign": ("nolabel.clustering", "assign"),
    "open_run_clustering": ("nolabel.clustering", "open_run_clustering"),
    "outliers": ("nolabel.clustering", "outliers"),
    "predict": ("nolabel.predict", "predict"),
    "export": ("nolabel.export", "export"),
    "similar": ("nolabel.similar", "similar"),
    "evaluate": ("nolabel.metrics", "evaluate"),
    "load_config": ("nolabel.config", "load_config"),
    "RunConfig": ("nolabel.config", "RunConfig"),
    "run": ("nolabel.pipeline", "run"),
    "write_report": ("nolabel.report", "write_report"),
    "NolabelError": ("nolabel.errors", "NolabelError"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'nolabel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
