/* Live fix for SQLite 3.40.1 (Debian 3.40.1-2+deb12u1): CVE-2025-6965.
 *
 * "Raise an error right away if the number of aggregate terms in a query
 * exceeds the maximum number of columns", SQLite check-in 5508b56fd24016c1
 * (drh, 2025-06-27, released in 3.50.2), backported by Debian as
 * debian/patches/42-CVE-2025-6965.patch in 3.40.1-2+deb12u2 (closes
 * #1109379).  Without it, a query with more than 32767 aggregate terms
 * overflows the i16 AggInfo indexes (memory corruption).
 *
 * The real fix changes the private (static) analyzeAggregate() of expr.c,
 * and so does this one: it replaces that static function (found by the
 * packer in the library's .symtab), which the library reaches only through
 * a function pointer (the expression walker's callback).  The body is
 * analyzeAggregate() of 3.40.1 with the upstream change, marked FIX, built
 * against the library's own headers with the library's exact compiler
 * flags (struct layouts depend on them).  It calls the library's functions
 * sqlite3ErrorMsg, sqlite3ExprCompare, sqlite3FindFunction and
 * sqlite3ArrayAllocate (Debian's non-amalgamation build exports them); the
 * two static helpers addAggInfoColumn() and addAggInfoFunc() exist only
 * inlined, so the fix carries them unchanged.
 *
 * The upstream fix also widens AggInfo fields (i16 -> int) in sqliteInt.h.
 * A live fix cannot change the layout of objects the running library has
 * already allocated; the check alone closes the hole, because the limit it
 * enforces (SQLITE_LIMIT_COLUMN, at most 32767) keeps every index inside i16.
 */
#include "sqliteInt.h"

/* expr.c's static addAggInfoColumn() and addAggInfoFunc(), unchanged. */
static int add_agg_info_column(sqlite3 *db, AggInfo *pInfo)
{
    int i;
    pInfo->aCol = sqlite3ArrayAllocate(db, pInfo->aCol, sizeof(pInfo->aCol[0]),
                                       &pInfo->nColumn, &i);
    return i;
}

static int add_agg_info_func(sqlite3 *db, AggInfo *pInfo)
{
    int i;
    pInfo->aFunc = sqlite3ArrayAllocate(db, pInfo->aFunc, sizeof(pInfo->aFunc[0]),
                                        &pInfo->nFunc, &i);
    return i;
}

int analyzeAggregate_fixed(Walker *pWalker, Expr *pExpr)
{
    int i;
    NameContext *pNC = pWalker->u.pNC;
    Parse *pParse = pNC->pParse;
    SrcList *pSrcList = pNC->pSrcList;
    AggInfo *pAggInfo = pNC->uNC.pAggInfo;

    switch (pExpr->op) {
    case TK_IF_NULL_ROW:
    case TK_AGG_COLUMN:
    case TK_COLUMN: {
        if (ALWAYS(pSrcList != 0)) {
            SrcItem *pItem = pSrcList->a;
            for (i = 0; i < pSrcList->nSrc; i++, pItem++) {
                struct AggInfo_col *pCol;
                if (pExpr->iTable == pItem->iCursor) {
                    int k;
                    int mxTerm = pParse->db->aLimit[SQLITE_LIMIT_COLUMN]; /* FIX */
                    pCol = pAggInfo->aCol;
                    for (k = 0; k < pAggInfo->nColumn; k++, pCol++) {
                        if (pCol->iTable == pExpr->iTable && pCol->iColumn == pExpr->iColumn
                            && pExpr->op != TK_IF_NULL_ROW) {
                            break;
                        }
                    }
                    if ((k >= pAggInfo->nColumn)
                        && (k = add_agg_info_column(pParse->db, pAggInfo)) >= 0) {
                        if (k > mxTerm) { /* FIX */
                            sqlite3ErrorMsg(pParse, "more than %d aggregate terms", mxTerm);
                            k = mxTerm;
                        }
                        pCol = &pAggInfo->aCol[k];
                        pCol->pTab = pExpr->y.pTab;
                        pCol->iTable = pExpr->iTable;
                        pCol->iColumn = pExpr->iColumn;
                        pCol->iMem = ++pParse->nMem;
                        pCol->iSorterColumn = -1;
                        pCol->pCExpr = pExpr;
                        if (pAggInfo->pGroupBy && pExpr->op != TK_IF_NULL_ROW) {
                            int j, n;
                            ExprList *pGB = pAggInfo->pGroupBy;
                            struct ExprList_item *pTerm = pGB->a;
                            n = pGB->nExpr;
                            for (j = 0; j < n; j++, pTerm++) {
                                Expr *pE = pTerm->pExpr;
                                if (pE->op == TK_COLUMN && pE->iTable == pExpr->iTable
                                    && pE->iColumn == pExpr->iColumn) {
                                    pCol->iSorterColumn = j;
                                    break;
                                }
                            }
                        }
                        if (pCol->iSorterColumn < 0) {
                            pCol->iSorterColumn = pAggInfo->nSortingColumn++;
                        }
                    }
                    ExprSetVVAProperty(pExpr, EP_NoReduce);
                    pExpr->pAggInfo = pAggInfo;
                    if (pExpr->op == TK_COLUMN) {
                        pExpr->op = TK_AGG_COLUMN;
                    }
                    pExpr->iAgg = (i16)k;
                    break;
                }
            }
        }
        return WRC_Prune;
    }
    case TK_AGG_FUNCTION: {
        if ((pNC->ncFlags & NC_InAggFunc) == 0 && pWalker->walkerDepth == pExpr->op2) {
            struct AggInfo_func *pItem = pAggInfo->aFunc;
            int mxTerm = pParse->db->aLimit[SQLITE_LIMIT_COLUMN]; /* FIX */
            for (i = 0; i < pAggInfo->nFunc; i++, pItem++) {
                if (pItem->pFExpr == pExpr)
                    break;
                if (sqlite3ExprCompare(0, pItem->pFExpr, pExpr, -1) == 0) {
                    break;
                }
            }
            if (i > mxTerm) { /* FIX */
                sqlite3ErrorMsg(pParse, "more than %d aggregate terms", mxTerm);
                i = mxTerm;
            } else if (i >= pAggInfo->nFunc) {
                u8 enc = ENC(pParse->db);
                i = add_agg_info_func(pParse->db, pAggInfo);
                if (i >= 0) {
                    pItem = &pAggInfo->aFunc[i];
                    pItem->pFExpr = pExpr;
                    pItem->iMem = ++pParse->nMem;
                    pItem->pFunc = sqlite3FindFunction(pParse->db, pExpr->u.zToken,
                                                       pExpr->x.pList ? pExpr->x.pList->nExpr : 0,
                                                       enc, 0);
                    if (pExpr->flags & EP_Distinct) {
                        pItem->iDistinct = pParse->nTab++;
                    } else {
                        pItem->iDistinct = -1;
                    }
                }
            }
            ExprSetVVAProperty(pExpr, EP_NoReduce);
            pExpr->iAgg = (i16)i;
            pExpr->pAggInfo = pAggInfo;
            return WRC_Prune;
        }
        return WRC_Continue;
    }
    }
    return WRC_Continue;
}
