import pandas as pd

from tagifai_api.ml import data


def test_map_labels_sends_unknown_and_rare_tags_to_other():
    tags = ["computer-vision"] * 5 + ["mlops"] * 2 + ["reinforcement-learning"] * 9
    mapped = data.map_labels(tags, ["computer-vision", "mlops"], min_freq=3)
    assert mapped == ["computer-vision"] * 5 + ["other"] * 11


def test_prepare_joins_title_and_description(dataset, train_args):
    df = data.prepare(dataset.head(3), train_args["accepted_tags"], 1)
    row = dataset.iloc[0]
    assert df.loc[0, "text"] == f"{row.title} {row.description}"
    assert df.loc[0, "clean"] == data.clean_text(df.loc[0, "text"])


def test_prepare_tolerates_missing_description():
    df = pd.DataFrame({"title": ["A title"], "description": [None], "tag": ["mlops"]})
    out = data.prepare(df, ["mlops"], 1)
    assert out.loc[0, "clean"] == "a title"


def test_split_is_stratified_disjoint_and_reproducible(dataset, train_args):
    df = data.prepare(dataset, train_args["accepted_tags"], train_args["min_tag_freq"])
    a = data.split(df, 0.15, 0.15, seed=7)
    b = data.split(df, 0.15, 0.15, seed=7)
    ids = [set(part["id"]) for part in a]
    assert sum(len(s) for s in ids) == len(df)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert all(x["id"].tolist() == y["id"].tolist() for x, y in zip(a, b))
    overall = df["tag"].value_counts(normalize=True)
    for part in a:
        share = part["tag"].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.05


def test_slices():
    texts = ["a short text", "text classification with a convolutional network for sentences and more words"]
    assert data.short_text(texts).tolist() == [True, False]
    tags = ["natural-language-processing", "natural-language-processing"]
    assert data.nlp_cnn(texts, tags).tolist() == [False, True]
    assert data.nlp_cnn(texts, ["computer-vision"] * 2).tolist() == [False, False]


def test_time_split_holds_out_the_newest_projects():
    df = pd.DataFrame({"created_on": ["2020-03-01", "2020-01-01", "2020-05-01", "2020-02-01", "2020-04-01"],
                       "id": [3, 1, 5, 2, 4]})
    older, newer = data.time_split(df, newest=0.4)
    assert list(older["id"]) == [1, 2, 3]
    assert list(newer["id"]) == [4, 5]
    assert pd.to_datetime(older["created_on"]).max() <= pd.to_datetime(newer["created_on"]).min()
