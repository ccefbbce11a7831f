/**
 * The answers the AI peer writes into a shared document for this writer to review, and
 * their rejection: exactly what the AI wrote is deleted, for everyone, whatever the
 * collaborators typed around it or inside it meanwhile.
 *
 * Each followed session has a Yjs UndoManager that captures only the transactions its AI
 * peer made (one author, whose awareness names the session), so undoing it is "delete
 * every item the AI inserted": Yjs splits and deletes the items, we only say which
 * transactions count and which containers stay (those that hold someone else's text).
 */
import { type AbstractType, ContentType, isDeleted, type Item, UndoManager, type XmlFragment } from 'yjs'

import type { AiPeers } from './collab-peers'

/** The ids of the items an UndoManager's stack item inserted (a Yjs DeleteSet). */
type Insertions = UndoManager['undoStack'][number]['insertions']

/**
 * Whether a Yjs type holds anything visible that is not among `insertions` (a
 * collaborator's text typed inside a block the AI made).
 */
function holdsOthers(type: AbstractType<unknown>, insertions: Insertions): boolean {
  for (let item: Item | null = type._start; item !== null; item = item.right) {
    if (item.deleted) {
      continue
    }
    if (!isDeleted(insertions, item.id)) {
      return true
    }
    if (item.content instanceof ContentType && holdsOthers(item.content.type, insertions)) {
      return true
    }
  }
  return false
}

export class AiAnswers {
  private readonly followed = new Map<string, UndoManager>()
  /** The insertions being undone, while a reject runs (its deleteFilter reads them). */
  private undoing: Insertions | null = null

  /**
   * @param fragment The shared document's root (the `default` XmlFragment).
   * @param peers Who writes for which session.
   * @param origin The origin of the provider's remote transactions (the provider itself).
   */
  constructor(
    private readonly fragment: XmlFragment,
    private readonly peers: AiPeers,
    private readonly origin: unknown,
  ) {}

  /** Starts recording what the AI peer of `sessionId` writes (before the session starts). */
  follow(sessionId: string): void {
    if (this.followed.has(sessionId)) {
      return
    }
    const manager = new UndoManager(this.fragment, {
      trackedOrigins: new Set([this.origin]),
      // One stack item for the whole answer, however long it streams.
      captureTimeout: Number.POSITIVE_INFINITY,
      captureTransaction: transaction => this.peers.writerOf(transaction)?.session === sessionId,
      // A block the AI made goes unless someone else's text is left inside it.
      deleteFilter: item =>
        !(item.content instanceof ContentType) ||
        this.undoing === null ||
        !holdsOthers(item.content.type, this.undoing),
    })
    this.followed.set(sessionId, manager)
  }

  /**
   * Deletes what the AI peer of `sessionId` wrote, in one Yjs transaction that the
   * provider sends to everyone; false when nothing of it was recorded. The session is
   * forgotten either way.
   */
  reject(sessionId: string): boolean {
    const manager = this.followed.get(sessionId)
    const recorded = manager?.undoStack.at(-1)
    if (!manager || !recorded) {
      this.forget(sessionId)
      return false
    }
    this.undoing = recorded.insertions
    try {
      manager.undo()
    } finally {
      this.undoing = null
      this.forget(sessionId)
    }
    return true
  }

  /** Stops recording a session (its answer was accepted, or needs no review). */
  forget(sessionId: string): void {
    this.followed.get(sessionId)?.destroy()
    this.followed.delete(sessionId)
  }

  destroy(): void {
    for (const sessionId of [...this.followed.keys()]) {
      this.forget(sessionId)
    }
  }
}
