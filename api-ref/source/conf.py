# Sphinx configuration of the Ekko API reference (os-api-ref).
#
#   sphinx-build -W -b html api-ref/source api-ref/build/html

import os
import sys

sys.path.insert(0, os.path.abspath('../../'))

extensions = [
    'os_api_ref',
    'openstackdocstheme',
]

# openstackdocstheme (works offline: it reads the repository name from
# here, not from the network).
openstackdocs_repo_name = 'x/ekko'
openstackdocs_bug_project = 'ekko'
openstackdocs_bug_tag = 'api-ref'
openstackdocs_auto_name = False
openstackdocs_use_storyboard = False
html_theme = 'openstackdocs'
html_theme_options = {
    'sidebar_mode': 'toc',
}

project = 'Ekko API Reference'
copyright = '2026, Ekko contributors'

source_suffix = {'.rst': 'restructuredtext'}
master_doc = 'index'
exclude_patterns = []
pygments_style = 'native'
add_module_names = False
show_authors = False

# The microversion range os-api-ref shows.
os_api_ref_min_microversion = '1.0'
os_api_ref_max_microversion = '1.0'


def _no_path_params(app, env, docnames):
    # os-api-ref keeps the path parameters of the last rest_method; the
    # parameter tables of index.rst (headers, errors) come before any.
    env.path_params = []


def setup(app):
    app.connect('env-before-read-docs', _no_path_params)
