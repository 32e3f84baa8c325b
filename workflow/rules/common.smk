# Path helpers shared by the rules files: one place that says where each stage's files live.


def model_dir(model):
    return f"{MODEL_CACHE}/{model}"


def model_manifest(model):
    return f"{model_dir(model)}/manifest.json"
