"""Blinded reader studies of real vs synthetic images (the MediSyn paper's Figure 3): build, serve, score.

build.py draws the seeded design (design.py) and writes STUDY/site/ (site.py + assets/) and STUDY/key.json;
server.py serves site/ and stores submissions in STUDY/answers/; answers.py checks answer files against the key;
score.py scores them with stats.py; report.py writes the CSV/JSON files and score.html.
"""

from medisyn_cli.study.build import StudyConfig, build_study
from medisyn_cli.study.score import score_study
from medisyn_cli.study.server import make_server

__all__ = ["StudyConfig", "build_study", "score_study", "make_server"]
