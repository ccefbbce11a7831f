"""The frontend as a package: ``npm pack`` makes a tarball of the library build (ESM, .d.ts,
CSS), which installs into a fresh Vite + React + Tiptap app generated here; the app, wired
as the README shows, type-checks (strict) and builds."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
NPM_FLAGS = ["--prefer-offline", "--no-audit", "--no-fund"]

# The README's wiring, verbatim, plus lines that prove the types are the library's own.
WRITER_TSX = """\
import { EditorContent, useEditor } from '@tiptap/react'
import StarterKit from '@tiptap/starter-kit'
import { StreamingExtension, StreamingNode, StreamingWebSocketService, useStreaming } from 'tiptap-streaming'
import 'tiptap-streaming/style.css'

const service = new StreamingWebSocketService({ baseUrl: 'ws://localhost:3001', apiBaseUrl: 'http://localhost:3001' })

export function Writer() {
  const editor = useEditor({ extensions: [StarterKit, StreamingNode, StreamingExtension] })
  const ai = useStreaming({ editor, service, review: true })
  return (
    <>
      <button onClick={() => ai.startStreaming('Explain backpressure', { insertAt: 'selection' })}>Ask AI</button>
      {ai.isReviewing && <button onClick={ai.accept}>Accept</button>}
      <EditorContent editor={editor} />
    </>
  )
}
"""

TYPES_TS = """\
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import { StreamingExtension, StreamingNode, type StreamRecord } from 'tiptap-streaming'

const editor = new Editor({ extensions: [StarterKit, StreamingNode, StreamingExtension] })
export const accepted: boolean = editor.commands.acceptStream()
export const regenerated: boolean = editor.chain().regenerateStream().run()
export const record: StreamRecord | undefined = editor.storage.streaming.streamManager.get('id')
// @ts-expect-error insertAt is 'end', 'cursor', 'selection' or a position
editor.commands.startStream({ insertAt: 'middle' })
"""

MAIN_TSX = """\
import { createRoot } from 'react-dom/client'
import { Writer } from './Writer'

createRoot(document.getElementById('root')!).render(<Writer />)
"""

INDEX_HTML = """\
<!doctype html>
<html lang="en">
  <head><meta charset="UTF-8" /><title>Fresh app</title></head>
  <body><div id="root"></div><script type="module" src="/src/main.tsx"></script></body>
</html>
"""

TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "lib": ["ES2023", "DOM", "DOM.Iterable"],
        "module": "ESNext",
        "moduleResolution": "bundler",
        "jsx": "react-jsx",
        "strict": True,
        "noEmit": True,
        "skipLibCheck": False,
        "types": [],
    },
    "include": ["src"],
}

VITE_CONFIG = """\
import react from '@vitejs/plugin-react'
import { defineConfig } from 'vite'

export default defineConfig({ plugins: [react()], build: { chunkSizeWarningLimit: 2000 } })
"""


def run(command: list[str], cwd: Path, timeout: float) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.timeout(600)
def test_packed_library_installs_type_checks_and_builds_in_a_fresh_app(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    assert npm, "npm is needed for the package test"

    run([npm, "run", "build:lib"], FRONTEND, 300)
    pack = [npm, "pack", "--json", "--ignore-scripts", "--pack-destination", str(tmp_path)]
    packed = json.loads(run(pack, FRONTEND, 120))
    tarball = tmp_path / packed[0]["filename"]
    files = {entry["path"] for entry in packed[0]["files"]}
    assert {"dist-lib/index.js", "dist-lib/style.css", "dist-lib/types/index.d.ts", "package.json"} <= files
    assert not any(path.startswith(("src/", "tests/", "dist/")) for path in files)

    manifest = json.loads((FRONTEND / "package.json").read_text())
    versions = manifest["devDependencies"]
    assert set(manifest["peerDependencies"]) == {
        "@tiptap/core",
        "@tiptap/markdown",
        "@tiptap/pm",
        "@tiptap/react",
        "react",
        "socket.io-client",
        # Optional: only `tiptap-streaming/collab` (collaborative documents) needs them.
        "@tiptap/y-tiptap",
        "y-protocols",
        "yjs",
    }
    assert set(manifest["peerDependenciesMeta"]) == {"@tiptap/y-tiptap", "y-protocols", "yjs"}
    assert {"dist-lib/collab.js", "dist-lib/types/collab.d.ts"} <= files
    app = tmp_path / "fresh-app"
    (app / "src").mkdir(parents=True)
    # The app installs the Tiptap peers at one version, @tiptap/markdown among them.
    dependencies = [
        "@tiptap/core",
        "@tiptap/markdown",
        "@tiptap/pm",
        "@tiptap/react",
        "@tiptap/starter-kit",
        "react",
        "react-dom",
    ]
    tools = ["@types/react", "@types/react-dom", "@vitejs/plugin-react", "typescript", "vite"]
    package = {
        "name": "fresh-app",
        "private": True,
        "type": "module",
        "dependencies": {"tiptap-streaming": f"file:{tarball}"}
        | {name: versions[name] for name in dependencies},
        "devDependencies": {name: versions[name] for name in tools},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    (app / "tsconfig.json").write_text(json.dumps(TSCONFIG, indent=2))
    (app / "vite.config.ts").write_text(VITE_CONFIG)
    (app / "index.html").write_text(INDEX_HTML)
    (app / "src" / "Writer.tsx").write_text(WRITER_TSX)
    (app / "src" / "types.ts").write_text(TYPES_TS)
    (app / "src" / "main.tsx").write_text(MAIN_TSX)

    # socket.io-client comes in as a peer dependency of the package.
    run([npm, "install", *NPM_FLAGS], app, 300)
    assert (app / "node_modules" / "socket.io-client" / "package.json").exists()
    assert (app / "node_modules" / "@tiptap" / "markdown" / "package.json").exists()
    run([npm, "exec", "--", "tsc", "-p", "."], app, 120)
    run([npm, "exec", "--", "vite", "build"], app, 120)

    built = list((app / "dist" / "assets").iterdir())
    script = next(path for path in built if path.suffix == ".js").read_text()
    style = next(path for path in built if path.suffix == ".css").read_text()
    assert "streamingNode" in script
    assert ".streaming-node" in style
