"""Text sources: the five Zhang, Zhao & LeCun (2015) CSV datasets and the VADER sentiment domains.

Zhang CSVs (``<name>/train.csv``, ``test.csv``): no header, every field double-quoted, ``""`` for a
quote, newlines inside a field written as a literal ``\\n``. Text is title + ". " + body.
VADER ground truth (``<domain>_GroundTruth.txt``): ``id<TAB>mean_valence<TAB>text``, mostly UTF-8.
Text is stored in the shards as text; each backbone's tokenizer runs in the workers.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from crdist.data.sources.base import Source, SourceError, SourceSample, fingerprint_files, require_dir, require_file

# name: (folder, number of labels, offset in the shared 33-way head, fields before the body)
ZHANG = {
    "yelp": ("yelp_review_full_csv", 5, 0, 0),
    "amazon": ("amazon_review_full_csv", 5, 0, 1),
    "ag_news": ("ag_news_csv", 4, 5, 1),
    "dbpedia": ("dbpedia_csv", 14, 9, 1),
    "yahoo": ("yahoo_answers_csv", 10, 23, 1),
}
ORDERS = {
    1: ["yelp", "ag_news", "dbpedia", "amazon", "yahoo"],
    2: ["dbpedia", "yahoo", "ag_news", "amazon", "yelp"],
    3: ["yelp", "yahoo", "amazon", "dbpedia", "ag_news"],
    4: ["ag_news", "yelp", "amazon", "yahoo", "dbpedia"],
}
_DEFAULT_NAMES = {
    "ag_news": ["World", "Sports", "Business", "Sci/Tech"],
    "dbpedia": ["Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation",
                "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork"],
    "yahoo": ["Society & Culture", "Science & Mathematics", "Health", "Education & Reference",
              "Computers & Internet", "Sports", "Business & Finance", "Entertainment & Music",
              "Family & Relationships", "Politics & Government"],
}
SENTIMENT_DOMAINS = ["tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets"]


def load_text5(root: Path, order: int, train_per_task: int, test_per_task: int, seed: int) -> Source:
    """The MbPA++ protocol: per dataset a seeded sample of train and test rows, one 33-way head."""
    root = Path(root)
    samples: list[SourceSample] = []
    files = []
    for name in ORDERS[order]:
        folder, labels, offset, title_fields = ZHANG[name]
        base = require_dir(root / folder, f"expected the {name} CSV folder {folder}/ (Zhang et al. 2015)")
        for split, keep in (("train", train_per_task), ("test", test_per_task)):
            path = require_file(base / f"{split}.csv")
            files.append(path)
            rows = _reservoir(_zhang_rows(path, labels, title_fields), keep, random.Random(f"{seed}/{name}/{split}"))
            samples += [SourceSample(f"{name}-{split}-{line:07d}", offset + label, split, f"{path} line {line}",
                                     domain=name, text=text) for line, label, text in sorted(rows)]
    names = [f"review: {k} star{'s' if k > 1 else ''}" for k in range(1, 6)]
    for name in ("ag_news", "dbpedia", "yahoo"):
        names += _class_names(root / ZHANG[name][0] / "classes.txt", _DEFAULT_NAMES[name])
    return Source("text-5", "text", samples, names, f"text5:{fingerprint_files(files)}",
                  f"Zhang et al. text classification, MbPA++ protocol, order {order}", index_files=files)


def _zhang_rows(path: Path, labels: int, title_fields: int):
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, strict=True)
        line = 1
        try:
            for row in reader:
                if len(row) < 2 + title_fields:
                    raise SourceError(f"{path}: line {line}: expected a label and text fields, got {len(row)} field(s)")
                try:
                    label = int(row[0])
                except ValueError:
                    raise SourceError(f"{path}: line {line}: label {row[0]!r} is not a number") from None
                if not 1 <= label <= labels:
                    raise SourceError(f"{path}: line {line}: label {label} outside 1..{labels}")
                fields = [field.replace("\\n", " ").strip() for field in row[1:]]
                yield line, label - 1, join_text(fields[:title_fields], fields[title_fields:])
                line = reader.line_num + 1
        except csv.Error as err:
            raise SourceError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None


def join_text(titles: list[str], bodies: list[str]) -> str:
    """Title + ". " + body, as the MbPA++ protocol joins them; an empty field adds nothing (no
    stray ". " before a body without a title, none after a title without a body)."""
    title = " ".join(t for t in titles if t)
    body = " ".join(b for b in bodies if b)
    return f"{title}. {body}" if title and body else title or body


def _reservoir(rows, keep: int, rng: random.Random) -> list:
    """A uniform sample of ``keep`` rows in one pass (all rows when there are fewer)."""
    chosen = []
    for seen, row in enumerate(rows):
        if seen < keep:
            chosen.append(row)
        else:
            slot = rng.randrange(seen + 1)
            if slot < keep:
                chosen[slot] = row
    return chosen


def _class_names(path: Path, default: list[str]) -> list[str]:
    if not path.is_file():
        return default
    names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(names) != len(default):
        raise SourceError(f"{path}: {len(names)} class names, expected {len(default)}")
    return names


def sentiment_domains(root: Path, domains: list[str] | None) -> list[str]:
    """The domains in task order: ``domains`` as given (each must have its file), or every
    ``*_GroundTruth.txt`` in ``root``, the paper's four first."""
    root = Path(root)
    found = sorted(p.name.removesuffix("_GroundTruth.txt") for p in root.glob("*_GroundTruth.txt"))
    if not found:
        raise SourceError(f"{root}: no *_GroundTruth.txt files (e.g. hutto_ICWSM_2014/ from the vaderSentiment "
                          "3.3.2 source distribution)")
    if domains is None:
        return [d for d in SENTIMENT_DOMAINS if d in found] + [d for d in found if d not in SENTIMENT_DOMAINS]
    unknown = [d for d in domains if d not in found]
    if unknown:
        raise SourceError(f"data.text.domains names {', '.join(map(repr, unknown))}, which {root} does not have "
                          f"(no <domain>_GroundTruth.txt); its domains are: {', '.join(found)}")
    return list(domains)


def load_sentiment(root: Path, domains: list[str] | None) -> Source:
    """One binary task per domain: positive when the mean valence is above 0, negative below;
    sentences rated exactly 0 are dropped."""
    root = Path(root)
    domains = sentiment_domains(root, domains)
    samples, files = [], []
    for domain in domains:
        path = root / f"{domain}_GroundTruth.txt"
        files.append(path)
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t", 2)
            if len(fields) != 3:
                raise SourceError(f"{path}: line {number}: expected 'id<TAB>valence<TAB>text'")
            try:
                valence = float(fields[1])
            except ValueError:
                raise SourceError(f"{path}: line {number}: valence {fields[1]!r} is not a number") from None
            if valence == 0:
                continue
            samples.append(SourceSample(f"{domain}-{number:06d}", int(valence > 0), "train", f"{path} line {number}",
                                        domain=domain, text=fields[2].strip()))
    return Source("sentiment-domains", "text", samples, ["negative", "positive"],
                  f"sentiment:{fingerprint_files(files)}", f"VADER ground-truth sentiment, domains {', '.join(domains)}",
                  index_files=files)
