"""Tasks, class-name lists and label maps. A missing label is -1 everywhere.

The built-in lists document the two real label schemes and validate what a source reports;
when building shards the names always come from the source itself and are written to the
manifest, which is the single source of truth afterwards.
"""

from __future__ import annotations

from typing import Mapping, Sequence

MISSING = -1
BASE_TASKS: tuple[str, ...] = ("artist", "genre", "style")
TASKS: tuple[str, ...] = BASE_TASKS + ("combined",)


def heads_for_task(task: str) -> tuple[str, ...]:
    """The label heads a training task uses: `combined` trains all three."""
    if task == "combined":
        return BASE_TASKS
    if task in BASE_TASKS:
        return (task,)
    raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")


# ArtGAN splits (artist_class, genre_class, style_class.txt): index order of those files.
ARTGAN_ARTISTS: tuple[str, ...] = (
    "Albrecht_Durer", "Boris_Kustodiev", "Camille_Pissarro", "Childe_Hassam", "Claude_Monet",
    "Edgar_Degas", "Eugene_Boudin", "Gustave_Dore", "Ilya_Repin", "Ivan_Aivazovsky",
    "Ivan_Shishkin", "John_Singer_Sargent", "Marc_Chagall", "Martiros_Saryan", "Nicholas_Roerich",
    "Pablo_Picasso", "Paul_Cezanne", "Pierre_Auguste_Renoir", "Pyotr_Konchalovsky",
    "Raphael_Kirchner", "Rembrandt", "Salvador_Dali", "Vincent_van_Gogh",
)
ARTGAN_GENRES: tuple[str, ...] = (
    "abstract_painting", "cityscape", "genre_painting", "illustration", "landscape",
    "nude_painting", "portrait", "religious_painting", "sketch_and_study", "still_life",
)
STYLES: tuple[str, ...] = (
    "Abstract_Expressionism", "Action_painting", "Analytical_Cubism", "Art_Nouveau", "Baroque",
    "Color_Field_Painting", "Contemporary_Realism", "Cubism", "Early_Renaissance", "Expressionism",
    "Fauvism", "High_Renaissance", "Impressionism", "Mannerism_Late_Renaissance", "Minimalism",
    "Naive_Art_Primitivism", "New_Realism", "Northern_Renaissance", "Pointillism", "Pop_Art",
    "Post_Impressionism", "Realism", "Rococo", "Romanticism", "Symbolism", "Synthetic_Cubism",
    "Ukiyo_e",
)
ARTGAN_CLASSES: Mapping[str, tuple[str, ...]] = {
    "artist": ARTGAN_ARTISTS, "genre": ARTGAN_GENRES, "style": STYLES,
}

# huggan/wikiart ClassLabel names; 0 = "Unknown Artist", 10 = "Unknown Genre".
HF_ARTISTS: tuple[str, ...] = (
    "Unknown Artist", "boris-kustodiev", "camille-pissarro", "childe-hassam", "claude-monet",
    "edgar-degas", "eugene-boudin", "gustave-dore", "ilya-repin", "ivan-aivazovsky",
    "ivan-shishkin", "john-singer-sargent", "marc-chagall", "martiros-saryan", "nicholas-roerich",
    "pablo-picasso", "paul-cezanne", "pierre-auguste-renoir", "pyotr-konchalovsky",
    "raphael-kirchner", "rembrandt", "salvador-dali", "vincent-van-gogh", "hieronymus-bosch",
    "leonardo-da-vinci", "albrecht-durer", "edouard-cortes", "sam-francis", "juan-gris",
    "lucas-cranach-the-elder", "paul-gauguin", "konstantin-makovsky", "egon-schiele",
    "thomas-eakins", "gustave-moreau", "francisco-goya", "edvard-munch", "henri-matisse",
    "fra-angelico", "maxime-maufra", "jan-matejko", "mstislav-dobuzhinsky", "alfred-sisley",
    "mary-cassatt", "gustave-loiseau", "fernando-botero", "zinaida-serebriakova",
    "georges-seurat", "isaac-levitan", "joaquín-sorolla", "jacek-malczewski", "berthe-morisot",
    "andy-warhol", "arkhip-kuindzhi", "niko-pirosmani", "james-tissot", "vasily-polenov",
    "valentin-serov", "pietro-perugino", "pierre-bonnard", "ferdinand-hodler",
    "bartolome-esteban-murillo", "giovanni-boldini", "henri-martin", "gustav-klimt",
    "vasily-perov", "odilon-redon", "tintoretto", "gene-davis", "raphael", "john-henry-twachtman",
    "henri-de-toulouse-lautrec", "antoine-blanchard", "david-burliuk", "camille-corot",
    "konstantin-korovin", "ivan-bilibin", "titian", "maurice-prendergast", "edouard-manet",
    "peter-paul-rubens", "aubrey-beardsley", "paolo-veronese", "joshua-reynolds",
    "kuzma-petrov-vodkin", "gustave-caillebotte", "lucian-freud", "michelangelo",
    "dante-gabriel-rossetti", "felix-vallotton", "nikolay-bogdanov-belsky", "georges-braque",
    "vasily-surikov", "fernand-leger", "konstantin-somov", "katsushika-hokusai",
    "sir-lawrence-alma-tadema", "vasily-vereshchagin", "ernst-ludwig-kirchner", "mikhail-vrubel",
    "orest-kiprensky", "william-merritt-chase", "aleksey-savrasov", "hans-memling",
    "amedeo-modigliani", "ivan-kramskoy", "utagawa-kuniyoshi", "gustave-courbet",
    "william-turner", "theo-van-rysselberghe", "joseph-wright", "edward-burne-jones",
    "koloman-moser", "viktor-vasnetsov", "anthony-van-dyck", "raoul-dufy", "frans-hals",
    "hans-holbein-the-younger", "ilya-mashkov", "henri-fantin-latour", "m.c.-escher", "el-greco",
    "mikalojus-ciurlionis", "james-mcneill-whistler", "karl-bryullov", "jacob-jordaens",
    "thomas-gainsborough", "eugene-delacroix", "canaletto",
)
HF_GENRES: tuple[str, ...] = ARTGAN_GENRES + ("Unknown Genre",)
HF_CLASSES: Mapping[str, tuple[str, ...]] = {"artist": HF_ARTISTS, "genre": HF_GENRES, "style": STYLES}

UNKNOWN_NAMES = frozenset({"Unknown Artist", "Unknown Genre", "Unknown Style"})


def is_unknown_class(name: str) -> bool:
    return name in UNKNOWN_NAMES


class LabelMap:
    """Maps a source's class indices to ours, optionally dropping "Unknown" classes to -1.

    With `keep_unknown=False` the unknown class is removed from the class list and the
    remaining indices are compacted, so heads never predict "Unknown".
    """

    def __init__(self, source_names: Sequence[str], keep_unknown: bool = False):
        self.source_names = list(source_names)
        self.names: list[str] = []
        self._remap: dict[int, int] = {}
        for idx, name in enumerate(self.source_names):
            if is_unknown_class(name) and not keep_unknown:
                self._remap[idx] = MISSING
            else:
                self._remap[idx] = len(self.names)
                self.names.append(name)

    def __call__(self, source_index: int | None) -> int:
        if source_index is None or source_index == MISSING:
            return MISSING
        if source_index not in self._remap:
            raise ValueError(f"label {source_index} out of range 0..{len(self.source_names) - 1}")
        return self._remap[source_index]


def check_label(value: int, num_classes: int, where: str) -> int:
    """Validate one label against a class count; -1 (missing) is allowed."""
    if value == MISSING or 0 <= value < num_classes:
        return value
    raise ValueError(f"{where}: label {value} out of range 0..{num_classes - 1}")
