/**
 * The demo's selection menu (Tiptap's BubbleMenu): an entry per action the server lists
 * (`data-action="<id>"`), the language and tone of the actions that take them, and a free
 * instruction about the selection (the `custom` action, which rewrites it).
 */
import type { Editor } from '@tiptap/core'
import { BubbleMenu } from '@tiptap/react/menus'
import { type FormEvent, type MouseEvent, useState } from 'react'

import type { ActionDefinition, RunActionOptions } from '../streaming'

const LANGUAGES = ['French', 'German', 'Spanish']
const TONES = ['formal', 'casual', 'confident']

/** Menu buttons keep the editor's selection: the action runs on it. */
const keepSelection = (event: MouseEvent): void => event.preventDefault()

interface AiMenuProps {
  editor: Editor
  /** The actions the server lists. */
  actions: readonly ActionDefinition[]
  /** Runs an action on the editor's selection. */
  run: (id: string, options?: RunActionOptions) => void
}

export function AiMenu({ editor, actions, run }: AiMenuProps) {
  const [language, setLanguage] = useState(LANGUAGES[0] ?? 'French')
  const [tone, setTone] = useState(TONES[0] ?? 'formal')
  const [instruction, setInstruction] = useState('')
  // Autocomplete has its own trigger; the free instruction is the form below.
  const entries = actions.filter(action => action.id !== 'complete' && action.id !== 'custom')
  const takes = (option: string) => entries.some(action => action.options.includes(option))

  const ask = (event: FormEvent): void => {
    event.preventDefault()
    if (instruction.trim() !== '') {
      run('custom', { prompt: instruction })
      setInstruction('')
    }
  }

  return (
    <BubbleMenu
      editor={editor}
      className="ai-menu"
      data-testid="ai-menu"
      role="toolbar"
      aria-label="AI actions on the selection"
      options={{ placement: 'bottom-start' }}
    >
      <div className="ai-menu__actions">
        {entries.map(action => (
          <button
            key={action.id}
            type="button"
            data-action={action.id}
            onMouseDown={keepSelection}
            onClick={() =>
              run(action.id, {
                ...(action.options.includes('language') ? { language } : {}),
                ...(action.options.includes('tone') ? { tone } : {}),
              })
            }
          >
            {action.label}
          </button>
        ))}
      </div>
      <div className="ai-menu__options">
        {takes('language') ? (
          <label>
            Language
            <select data-testid="ai-language" value={language} onChange={event => setLanguage(event.target.value)}>
              {LANGUAGES.map(name => (
                <option key={name}>{name}</option>
              ))}
            </select>
          </label>
        ) : null}
        {takes('tone') ? (
          <label>
            Tone
            <select data-testid="ai-tone" value={tone} onChange={event => setTone(event.target.value)}>
              {TONES.map(name => (
                <option key={name}>{name}</option>
              ))}
            </select>
          </label>
        ) : null}
        <form onSubmit={ask}>
          <input
            type="text"
            data-testid="ai-prompt"
            aria-label="Ask AI about the selection"
            placeholder="Ask AI to…"
            value={instruction}
            onChange={event => setInstruction(event.target.value)}
          />
        </form>
      </div>
    </BubbleMenu>
  )
}
