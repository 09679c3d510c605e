// Part of `npm run build`: copies the console's page (plain files, no
// bundling) to dist/admin/ui, beside the compiled server. The layout library
// is served from node_modules (elkjs is a dependency), not copied.
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(here, '../../../dist/admin/ui');
mkdirSync(out, { recursive: true });
for (const f of ['index.html', 'console.css', 'app.js', 'graph.js']) copyFileSync(path.join(here, f), path.join(out, f));
