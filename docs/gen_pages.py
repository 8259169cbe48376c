"""Run by MkDocs (the gen-files plugin) while it builds the site: the methods reference."""
import mkdocs_gen_files

from explorl.docs_site import method_pages

for page in method_pages():
    with mkdocs_gen_files.open(page.path, "w") as f:
        f.write(page.text)
