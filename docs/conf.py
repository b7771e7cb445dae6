"""Sphinx configuration of the torchgeo-mmearth documentation.

Build with ``make docs``, or ``sphinx-build -E -W --keep-going -b html docs
docs/_build/html``. The build needs no network: there is no intersphinx, and the
tutorials (MyST-NB notebooks under ``tutorials/``) run on the data the package ships.
``NB_EXECUTION_MODE=off`` skips running them while editing prose.
"""

import os
import sys
from pathlib import Path

import torchgeo_mmearth

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / '_ext'))

# The tutorials call the torchgeo-mmearth command, as a user with the environment
# activated would: put the scripts installed beside this Python first on the PATH
# (the notebook kernel inherits it).
os.environ['PATH'] = os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get('PATH', '')]
)

# -- Project information ---------------------------------------------------------

project = 'torchgeo-mmearth'
author = 'torchgeo-mmearth contributors'
copyright = 'torchgeo-mmearth contributors'
version = release = torchgeo_mmearth.__version__

# -- General configuration -------------------------------------------------------

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'myst_nb',
    'mmearth_docs',
]
exclude_patterns = ['_build', '_ext', 'jupyter_execute', '**.ipynb_checkpoints']
# Unresolvable references to torch, torchgeo, timm, ... (no intersphinx offline) are
# not errors.
nitpicky = False

# -- autodoc and napoleon (Google style, as TorchGeo) ------------------------------

autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_typehints_description_target = 'documented_params'
autodoc_class_signature = 'separated'
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- MyST and MyST-NB ------------------------------------------------------------

myst_enable_extensions = ['colon_fence', 'deflist']
myst_heading_anchors = 3
# Every tutorial runs at every build (CI executes them this way); a failing cell
# fails the build.
nb_execution_mode = os.environ.get('NB_EXECUTION_MODE', 'force')
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# -- HTML output -----------------------------------------------------------------

html_theme = 'pydata_sphinx_theme'
html_title = f'torchgeo-mmearth {release}'
html_theme_options = {
    'github_url': 'https://github.com/torchgeo-mmearth/torchgeo-mmearth',
    'show_toc_level': 2,
    'navigation_with_keys': False,
    'footer_start': ['copyright'],
    'footer_end': ['sphinx-version', 'theme-version'],
}
html_show_sourcelink = False
