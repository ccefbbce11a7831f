/**
 * The AI peers of a shared document, told apart from the people in it by their awareness
 * state: the server's peer publishes `{user: {name, color, aiInstanceId: <sessionId>}}`
 * while it writes (PROTOCOL.md "Collaborative documents (Yjs)"), as Tiptap's AI server
 * does. A Yjs transaction that came from one such client is that session's writing.
 */
import type { Awareness } from 'y-protocols/awareness'
import type { Transaction } from 'yjs'

/** The awareness `change` event's detail. */
interface AwarenessChanges {
  added: number[]
  updated: number[]
  removed: number[]
}

/** The session an awareness state names as the AI writing, if it names one. */
function aiInstanceOf(state: Record<string, unknown> | undefined): string | null {
  const user = state?.user
  if (typeof user !== 'object' || user === null) {
    return null
  }
  const id = (user as { aiInstanceId?: unknown }).aiInstanceId
  return typeof id === 'string' && id !== '' ? id : null
}

/**
 * The client that made every insertion of a transaction, when exactly one did: a remote
 * update from one peer. A document sync that brings several authors' text has none.
 */
export function soleAuthor(transaction: Transaction): number | null {
  let author: number | null = null
  for (const [client, clock] of transaction.afterState) {
    if (clock > (transaction.beforeState.get(client) ?? 0)) {
      if (author !== null) {
        return null
      }
      author = client
    }
  }
  return author
}

export class AiPeers {
  /**
   * The session each AI client last announced. Kept after its state goes (the peer clears
   * it once done, and that may overtake its last update): a client that once wrote as the
   * AI is taken for the session it last named.
   */
  private readonly sessions = new Map<number, string>()
  private readonly onChange = ({ added, updated }: AwarenessChanges): void => {
    const states = this.awareness.getStates()
    for (const client of [...added, ...updated]) {
      const session = aiInstanceOf(states.get(client))
      if (session !== null) {
        this.sessions.set(client, session)
      }
    }
  }

  constructor(private readonly awareness: Awareness) {
    for (const [client, state] of awareness.getStates()) {
      const session = aiInstanceOf(state)
      if (session !== null) {
        this.sessions.set(client, session)
      }
    }
    awareness.on('change', this.onChange)
  }

  /** The session a client writes for, or null when it is not an AI peer. */
  sessionOf(client: number): string | null {
    return this.sessions.get(client) ?? null
  }

  /** The AI session a remote transaction is the writing of: its only author is an AI peer. */
  writerOf(transaction: Transaction): { client: number; session: string } | null {
    const client = transaction.local ? null : soleAuthor(transaction)
    const session = client === null ? null : this.sessionOf(client)
    return client !== null && session !== null ? { client, session } : null
  }

  destroy(): void {
    this.awareness.off('change', this.onChange)
  }
}
